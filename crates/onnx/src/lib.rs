//! A small ONNX writer: [`GraphBuilder`] collects inputs, constant tensors and operator nodes
//! and [`GraphBuilder::finish`] makes the [`proto::ModelProto`] a `.onnx` file holds.
//!
//! It knows the file format, not any model: fusekit-detect walks its detector through it.
//! Floating-point tensors are written in one [`Precision`] chosen up front, so a half-precision
//! model is float16 throughout (inputs, weights, constants and outputs).

pub mod proto;

use proto::{
    AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TensorTypeProto, TypeProto,
    ValueInfoProto, attribute_type, dimension,
};

/// The operator-set versions fusekit writes: 13 introduced the `Split` and `ReduceSum` forms
/// it uses; 21 is the newest it knows the IR version of.
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;

/// Problems making a model.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The opset asked for is outside [`OPSETS`].
    #[error("opset {0} is not supported: fusekit writes opsets 13 to 21")]
    Opset(i64),
    /// A constant's values do not fill its shape.
    #[error("constant {name} has {values} values for shape {dims:?}")]
    ConstantShape {
        /// The constant.
        name: String,
        /// Values given.
        values: usize,
        /// Its shape.
        dims: Vec<i64>,
    },
}

/// The element type of every floating-point tensor in a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 32-bit floats.
    Float32,
    /// 16-bit IEEE floats.
    Float16,
}

impl Precision {
    /// The ONNX `TensorProto.DataType` code.
    pub fn data_type(self) -> i32 {
        match self {
            Precision::Float32 => DATA_TYPE_FLOAT,
            Precision::Float16 => DATA_TYPE_FLOAT16,
        }
    }

    fn bytes(self, values: &[f32]) -> Vec<u8> {
        match self {
            Precision::Float32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Precision::Float16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        }
    }
}

/// `TensorProto.DataType.FLOAT`.
pub const DATA_TYPE_FLOAT: i32 = 1;
/// `TensorProto.DataType.INT64`.
pub const DATA_TYPE_INT64: i32 = 7;
/// `TensorProto.DataType.FLOAT16`.
pub const DATA_TYPE_FLOAT16: i32 = 10;

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A size chosen by the caller at run time, named (`batch`, `height`).
    Named(String),
}

/// An operator attribute.
pub struct Attribute(AttributeProto);

impl Attribute {
    /// An integer attribute.
    pub fn int(name: &str, value: i64) -> Self {
        Self(AttributeProto {
            name: name.into(),
            i: value,
            r#type: attribute_type::INT,
            ..Default::default()
        })
    }

    /// A list of integers.
    pub fn ints(name: &str, values: &[i64]) -> Self {
        Self(AttributeProto {
            name: name.into(),
            ints: values.to_vec(),
            r#type: attribute_type::INTS,
            ..Default::default()
        })
    }

    /// A float attribute.
    pub fn float(name: &str, value: f32) -> Self {
        Self(AttributeProto {
            name: name.into(),
            f: value,
            r#type: attribute_type::FLOAT,
            ..Default::default()
        })
    }

    /// A string attribute.
    pub fn string(name: &str, value: &str) -> Self {
        Self(AttributeProto {
            name: name.into(),
            s: value.as_bytes().to_vec(),
            r#type: attribute_type::STRING,
            ..Default::default()
        })
    }
}

/// Builds one graph: values are named by the builder and returned as strings to wire into
/// later nodes.
pub struct GraphBuilder {
    graph: GraphProto,
    precision: Precision,
    next_id: usize,
}

impl GraphBuilder {
    /// An empty graph named `name` whose floating-point tensors are all in `precision`.
    pub fn new(name: &str, precision: Precision) -> Self {
        Self {
            graph: GraphProto {
                name: name.into(),
                ..Default::default()
            },
            precision,
            next_id: 0,
        }
    }

    /// The floating-point precision of the graph.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Declares a floating-point graph input and returns its name.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> String {
        let info = value_info(name, self.precision.data_type(), dims);
        self.graph.input.push(info);
        name.to_string()
    }

    /// Declares `value` a floating-point graph output called `name`.
    pub fn output(&mut self, value: &str, name: &str, dims: &[Dim]) {
        self.graph.node.push(NodeProto {
            input: vec![value.into()],
            output: vec![name.into()],
            name: format!("{name}/Identity"),
            op_type: "Identity".into(),
            attribute: Vec::new(),
        });
        let info = value_info(name, self.precision.data_type(), dims);
        self.graph.output.push(info);
    }

    /// A floating-point constant (weights, biases), stored in the graph's precision.
    pub fn float_constant(&mut self, dims: &[i64], values: &[f32]) -> Result<String, OnnxError> {
        let name = format!("weight_{}", self.fresh_id());
        check_shape(&name, dims, values.len())?;
        let raw_data = self.precision.bytes(values);
        Ok(self.push_initializer(&name, dims, self.precision.data_type(), raw_data))
    }

    /// A 32-bit float constant whatever the graph's precision (operator inputs that are always
    /// float32, such as `Resize`'s scales).
    pub fn f32_constant(&mut self, dims: &[i64], values: &[f32]) -> Result<String, OnnxError> {
        let name = format!("const_{}", self.fresh_id());
        check_shape(&name, dims, values.len())?;
        let raw_data = Precision::Float32.bytes(values);
        Ok(self.push_initializer(&name, dims, DATA_TYPE_FLOAT, raw_data))
    }

    /// A 64-bit integer constant (shapes, axes, split sizes).
    pub fn int_constant(&mut self, dims: &[i64], values: &[i64]) -> Result<String, OnnxError> {
        let name = format!("const_{}", self.fresh_id());
        check_shape(&name, dims, values.len())?;
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(self.push_initializer(&name, dims, DATA_TYPE_INT64, raw_data))
    }

    /// A floating-point scalar constant in the graph's precision.
    pub fn scalar(&mut self, value: f32) -> String {
        let name = format!("const_{}", self.fresh_id());
        let raw_data = self.precision.bytes(&[value]);
        self.push_initializer(&name, &[], self.precision.data_type(), raw_data)
    }

    /// Applies `op` to `inputs` and returns its one output.
    pub fn op(&mut self, op: &str, inputs: &[&str], attributes: Vec<Attribute>) -> String {
        self.op_n(op, inputs, 1, attributes).remove(0)
    }

    /// Applies `op` to `inputs` and returns its `outputs` outputs.
    pub fn op_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: usize,
        attributes: Vec<Attribute>,
    ) -> Vec<String> {
        let id = self.fresh_id();
        let names: Vec<String> = (0..outputs).map(|k| format!("{op}_{id}:{k}")).collect();
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: names.clone(),
            name: format!("{op}_{id}"),
            op_type: op.into(),
            attribute: attributes.into_iter().map(|a| a.0).collect(),
        });
        names
    }

    /// Casts `value` to the graph's floating-point precision.
    pub fn cast_to_float(&mut self, value: &str) -> String {
        let to = i64::from(self.precision.data_type());
        self.op("Cast", &[value], vec![Attribute::int("to", to)])
    }

    /// The model: this graph in operator set `opset` of the default domain, with `metadata`
    /// as the model's key/value properties.
    pub fn finish(
        self,
        opset: i64,
        metadata: &[(String, String)],
        producer: (&str, &str),
    ) -> Result<ModelProto, OnnxError> {
        let ir_version = ir_version(opset)?;
        Ok(ModelProto {
            ir_version,
            producer_name: producer.0.into(),
            producer_version: producer.1.into(),
            doc_string: String::new(),
            graph: Some(self.graph),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: opset,
            }],
            metadata_props: metadata
                .iter()
                .map(|(key, value)| StringStringEntryProto {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
        })
    }

    fn fresh_id(&mut self) -> usize {
        self.next_id += 1;
        self.next_id
    }

    fn push_initializer(
        &mut self,
        name: &str,
        dims: &[i64],
        data_type: i32,
        raw_data: Vec<u8>,
    ) -> String {
        self.graph.initializer.push(TensorProto {
            dims: dims.to_vec(),
            data_type,
            name: name.into(),
            raw_data,
        });
        name.to_string()
    }
}

/// The bytes of a `.onnx` file holding `model`.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    prost::Message::encode_to_vec(model)
}

/// The IR version that goes with `opset` (the ONNX release that introduced the opset).
pub fn ir_version(opset: i64) -> Result<i64, OnnxError> {
    Ok(match opset {
        13 | 14 => 7,
        15..=18 => 8,
        19 | 20 => 9,
        21 => 10,
        other => return Err(OnnxError::Opset(other)),
    })
}

fn check_shape(name: &str, dims: &[i64], values: usize) -> Result<(), OnnxError> {
    let expected: i64 = dims.iter().product();
    if expected as usize == values {
        Ok(())
    } else {
        Err(OnnxError::ConstantShape {
            name: name.into(),
            values,
            dims: dims.to_vec(),
        })
    }
}

fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(size) => dimension::Value::DimValue(*size),
                Dim::Named(param) => dimension::Value::DimParam(param.clone()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn a_model_round_trips_through_its_encoding() {
        let mut graph = GraphBuilder::new("g", Precision::Float32);
        let x = graph.input("x", &[Dim::Named("batch".into()), Dim::Fixed(3)]);
        let w = graph.float_constant(&[3], &[1.0, 2.0, 3.0]).unwrap();
        let y = graph.op("Mul", &[&x, &w], Vec::new());
        graph.output(&y, "y", &[Dim::Named("batch".into()), Dim::Fixed(3)]);
        let model = graph
            .finish(17, &[("names".into(), "{0: 'a'}".into())], ("fusekit", "0"))
            .unwrap();
        let bytes = model.encode_to_vec();
        let decoded = ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, model);
        assert_eq!(decoded.ir_version, 8);
        let graph = decoded.graph.unwrap();
        assert_eq!(graph.node.len(), 2);
        assert_eq!(graph.initializer[0].raw_data.len(), 12);
    }

    #[test]
    fn half_precision_stores_two_bytes_per_value_and_float16_inputs() {
        let mut graph = GraphBuilder::new("g", Precision::Float16);
        graph.input("x", &[Dim::Fixed(2)]);
        graph.float_constant(&[2], &[1.0, -0.5]).unwrap();
        let model = graph.finish(17, &[], ("fusekit", "0")).unwrap();
        let graph = model.graph.unwrap();
        assert_eq!(graph.initializer[0].raw_data, vec![0x00, 0x3c, 0x00, 0xb8]);
        let input_type = graph.input[0].r#type.clone().unwrap().tensor_type.unwrap();
        assert_eq!(input_type.elem_type, DATA_TYPE_FLOAT16);
    }

    #[test]
    fn constants_must_fill_their_shape_and_opsets_are_checked() {
        let mut graph = GraphBuilder::new("g", Precision::Float32);
        assert!(matches!(
            graph.float_constant(&[2, 2], &[1.0]),
            Err(OnnxError::ConstantShape { values: 1, .. })
        ));
        assert!(matches!(ir_version(12), Err(OnnxError::Opset(12))));
        assert!(matches!(ir_version(22), Err(OnnxError::Opset(22))));
    }
}
