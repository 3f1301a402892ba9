//! Reading a dataset description: an Ultralytics-style data yaml or a bare folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ir::IrNorm;
use crate::swap::ComponentSwap;

/// A data yaml or dataset folder that cannot be used (lint code DS001).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or folder could not be read.
    #[error("{path}: {cause}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// The yaml does not parse or has a value of the wrong type.
    #[error("{path}: invalid yaml: {message}")]
    Yaml {
        /// The yaml file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The yaml parses but its content is inconsistent (missing key, names/nc disagree, ...).
    #[error("{path}: {message}")]
    Invalid {
        /// The yaml file or dataset folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Where a split's RGB images come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Every image below a folder, recursively.
    Folder(PathBuf),
    /// A text file listing image paths, one per line.
    List {
        /// The list file.
        file: PathBuf,
        /// The listed images, resolved, with their 1-based line numbers.
        images: Vec<(PathBuf, usize)>,
    },
}

/// One named split (`train`, `val`, `test`, or `all` for a bare folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The split's name as in the data yaml.
    pub name: String,
    /// Its sources, in the order given.
    pub sources: Vec<Source>,
}

/// A paired dataset: where its files are and how RGB, IR and label paths relate.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The dataset root; reported paths are relative to it.
    pub root: PathBuf,
    /// The data yaml this dataset was read from, if any.
    pub config_file: Option<PathBuf>,
    /// The splits, in the order train, val, test (or the single `all`).
    pub splits: Vec<Split>,
    /// Class names by id; empty when unknown (bare folder without `--names`).
    pub names: Vec<String>,
    /// How to derive an IR path from an RGB path.
    pub ir: ComponentSwap,
    /// How to derive a label path from an RGB path (the extension becomes `.txt`).
    pub labels: ComponentSwap,
    /// How IR images become 8-bit planes (the yaml's `ir_norm:`, default `auto`).
    pub ir_norm: IrNorm,
}

#[derive(Deserialize)]
struct RawDataYaml {
    path: Option<String>,
    train: Option<RawSource>,
    val: Option<RawSource>,
    test: Option<RawSource>,
    names: Option<RawNames>,
    nc: Option<i64>,
    ir: Option<RawSwap>,
    labels: Option<RawSwap>,
    ir_norm: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSource {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawNames {
    List(Vec<String>),
    Map(BTreeMap<i64, String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSwap {
    Text(String),
    Map(BTreeMap<String, String>),
}

/// The file name looked for when a dataset folder is given.
pub const DATA_YAML: &str = "data.yaml";

impl Dataset {
    /// Opens a dataset from a data yaml, or from a folder holding `data.yaml` or an `images/`
    /// folder (then `names` gives the class names).
    pub fn open(path: &Path, names: Option<Vec<String>>) -> Result<Self, ConfigError> {
        let meta = std::fs::metadata(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            cause: source,
        })?;
        if meta.is_file() {
            return Self::from_yaml_file(path, names);
        }
        let yaml = path.join(DATA_YAML);
        if yaml.is_file() {
            return Self::from_yaml_file(&yaml, names);
        }
        Self::from_folder(path, names.unwrap_or_default())
    }

    /// A bare dataset folder with `images/`, `imagesIR/` and `labels/`, as one split `all`.
    pub fn from_folder(root: &Path, names: Vec<String>) -> Result<Self, ConfigError> {
        let images = root.join("images");
        if !images.is_dir() {
            return Err(ConfigError::Invalid {
                path: root.to_path_buf(),
                message: format!(
                    "not a dataset: no {DATA_YAML} and no images/ folder (expected images/, imagesIR/ and labels/)"
                ),
            });
        }
        Ok(Self {
            root: root.to_path_buf(),
            config_file: None,
            splits: vec![Split {
                name: "all".into(),
                sources: vec![Source::Folder(images)],
            }],
            names,
            ir: default_ir_swap(),
            labels: default_label_swap(),
            ir_norm: IrNorm::default(),
        })
    }

    /// Reads a data yaml file. `names` overrides the yaml's class names when given.
    pub fn from_yaml_file(file: &Path, names: Option<Vec<String>>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Io {
            path: file.to_path_buf(),
            cause: source,
        })?;
        Self::from_yaml_str(&text, file, names)
    }

    /// Parses data yaml text; `file` names it in errors and anchors relative paths.
    pub fn from_yaml_str(
        text: &str,
        file: &Path,
        names: Option<Vec<String>>,
    ) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: file.to_path_buf(),
            message,
        };
        let raw: RawDataYaml = serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml {
            path: file.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = match file.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let root = match raw.path.as_deref().map(str::trim) {
            Some(p) if !p.is_empty() => normalize(&base.join(p)),
            _ => base.to_path_buf(),
        };
        if !root.is_dir() {
            return Err(invalid(format!(
                "`path` {} is not a folder",
                root.display()
            )));
        }
        let yaml_names = match raw.names {
            None => None,
            Some(RawNames::List(list)) => Some(list),
            Some(RawNames::Map(map)) => Some(names_from_map(map).map_err(invalid)?),
        };
        if let (Some(nc), Some(list)) = (raw.nc, &yaml_names)
            && usize::try_from(nc).ok() != Some(list.len())
        {
            return Err(invalid(format!(
                "`nc` is {nc} but `names` has {} entries",
                list.len()
            )));
        }
        let names = match (names, yaml_names, raw.nc) {
            (Some(given), _, _) => given,
            (None, Some(list), _) => list,
            (None, None, Some(nc)) if nc >= 0 => (0..nc).map(|i| format!("class{i}")).collect(),
            (None, None, _) => return Err(invalid("missing key `names` (or `nc`)".into())),
        };
        let ir = match raw.ir {
            Some(swap) => {
                parse_swap(swap, "imagesIR").map_err(|m| invalid(format!("`ir`: {m}")))?
            }
            None => default_ir_swap(),
        };
        let labels = match raw.labels {
            Some(swap) => {
                parse_swap(swap, "labels").map_err(|m| invalid(format!("`labels`: {m}")))?
            }
            None => default_label_swap(),
        };
        let ir_norm = match raw.ir_norm {
            Some(text) => text
                .parse()
                .map_err(|m| invalid(format!("`ir_norm`: {m}")))?,
            None => IrNorm::default(),
        };
        let Some(train) = raw.train else {
            return Err(invalid("missing key `train`".into()));
        };
        let mut splits = Vec::new();
        for (name, raw_source) in [("train", Some(train)), ("val", raw.val), ("test", raw.test)] {
            let Some(raw_source) = raw_source else {
                continue;
            };
            let entries = match raw_source {
                RawSource::One(one) => vec![one],
                RawSource::Many(many) => many,
            };
            let mut sources = Vec::new();
            for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
                sources.push(
                    resolve_source(&root, entry).map_err(|m| invalid(format!("`{name}`: {m}")))?,
                );
            }
            if !sources.is_empty() {
                splits.push(Split {
                    name: name.to_owned(),
                    sources,
                });
            }
        }
        if splits.is_empty() {
            return Err(invalid("`train` names no folder or list".into()));
        }
        Ok(Self {
            root,
            config_file: Some(file.to_path_buf()),
            splits,
            names,
            ir,
            labels,
            ir_norm,
        })
    }

    /// The number of classes, when known.
    pub fn class_count(&self) -> Option<usize> {
        (!self.names.is_empty()).then_some(self.names.len())
    }

    /// `path` relative to the dataset root when it lies below it, else as given.
    pub fn relative<'a>(&self, path: &'a Path) -> &'a Path {
        path.strip_prefix(&self.root).unwrap_or(path)
    }

    /// The expected IR path of an RGB image, if the IR swap applies to it.
    pub fn ir_path(&self, rgb: &Path) -> Option<PathBuf> {
        self.ir.apply(rgb, &self.root)
    }

    /// The expected label path of an RGB image, if the label swap applies to it.
    pub fn label_path(&self, rgb: &Path) -> Option<PathBuf> {
        self.labels
            .apply(rgb, &self.root)
            .map(|p| p.with_extension("txt"))
    }
}

fn default_ir_swap() -> ComponentSwap {
    ComponentSwap::new("images", "imagesIR")
}

fn default_label_swap() -> ComponentSwap {
    ComponentSwap::new("images", "labels")
}

fn names_from_map(map: BTreeMap<i64, String>) -> Result<Vec<String>, String> {
    let mut names = Vec::with_capacity(map.len());
    for (expected, (id, name)) in map.into_iter().enumerate() {
        if id != expected as i64 {
            return Err(format!(
                "`names` ids must be 0..{} without gaps; id {expected} is missing (next is {id})",
                names.len()
            ));
        }
        names.push(name);
    }
    Ok(names)
}

/// `imagesIR` (swap `images`), `visible -> infrared`, or a one-entry map `{visible: infrared}`.
fn parse_swap(raw: RawSwap, default_target: &str) -> Result<ComponentSwap, String> {
    let (from, to) = match raw {
        RawSwap::Text(text) => match text.split_once("->") {
            Some((from, to)) => (from.trim().to_owned(), to.trim().to_owned()),
            None => ("images".to_owned(), text.trim().to_owned()),
        },
        RawSwap::Map(map) if map.len() == 1 => map.into_iter().next().expect("one entry"),
        RawSwap::Map(map) => {
            return Err(format!("expected one `from: to` entry, got {}", map.len()));
        }
    };
    let single = |s: &str| !s.is_empty() && !s.contains(['/', '\\']) && s != "." && s != "..";
    if !single(&from) || !single(&to) {
        return Err(format!(
            "expected folder names such as `images -> {default_target}`, got `{from} -> {to}`"
        ));
    }
    if from == to {
        return Err(format!("`{from} -> {to}` swaps a folder for itself"));
    }
    Ok(ComponentSwap::new(from, to))
}

/// Drops interior `.` components so that reported paths read cleanly.
fn normalize(path: &Path) -> PathBuf {
    path.components().collect()
}

fn resolve_source(root: &Path, entry: &str) -> Result<Source, String> {
    let path = normalize(&root.join(entry));
    if path.is_dir() {
        return Ok(Source::Folder(path));
    }
    if path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("txt"))
    {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let list_dir = path.parent().unwrap_or(root);
        let images = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                let line = line.trim();
                let image = match line.strip_prefix("./") {
                    Some(rest) => normalize(&list_dir.join(rest)),
                    None => normalize(&root.join(line)),
                };
                (image, i + 1)
            })
            .collect();
        return Ok(Source::List { file: path, images });
    }
    Err(format!(
        "{} is neither a folder nor a .txt list of images",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for sub in [
            "images/train",
            "images/val",
            "imagesIR/train",
            "labels/train",
        ] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        dir
    }

    fn parse(dir: &Path, text: &str) -> Result<Dataset, ConfigError> {
        Dataset::from_yaml_str(text, &dir.join("data.yaml"), None)
    }

    #[test]
    fn reads_ultralytics_keys_with_names_as_list_or_map() {
        let dir = dataset_dir();
        let list = parse(
            dir.path(),
            "path: .\ntrain: images/train\nval: images/val\nnames: [person, car]\n",
        )
        .unwrap();
        let map = parse(
            dir.path(),
            "train: images/train\nval: images/val\nnames:\n  0: person\n  1: car\nnc: 2\n",
        )
        .unwrap();
        assert_eq!(list.names, vec!["person", "car"]);
        assert_eq!(map.names, list.names);
        assert_eq!(map.splits.len(), 2);
        assert_eq!(
            map.splits[1].sources,
            vec![Source::Folder(dir.path().join("images/val"))]
        );
    }

    #[test]
    fn nc_disagreeing_with_names_is_invalid() {
        let dir = dataset_dir();
        let err = parse(dir.path(), "train: images/train\nnames: [a]\nnc: 2\n").unwrap_err();
        assert!(
            err.to_string().contains("`nc` is 2 but `names` has 1"),
            "{err}"
        );
    }

    #[test]
    fn missing_train_and_missing_folders_are_invalid() {
        let dir = dataset_dir();
        let err = parse(dir.path(), "names: [a]\n").unwrap_err();
        assert!(err.to_string().contains("missing key `train`"), "{err}");
        let err = parse(dir.path(), "train: images/nope\nnames: [a]\n").unwrap_err();
        assert!(err.to_string().contains("images/nope"), "{err}");
    }

    #[test]
    fn yaml_errors_name_the_line() {
        let dir = dataset_dir();
        let err = parse(dir.path(), "train: images/train\nnames: [a\nnc: 1\n").unwrap_err();
        assert!(matches!(err, ConfigError::Yaml { .. }), "{err}");
        assert!(
            err.to_string().contains("line") || err.to_string().contains(':'),
            "{err}"
        );
    }

    #[test]
    fn explicit_ir_and_label_swaps() {
        let dir = dataset_dir();
        let ds = parse(dir.path(), "train: images/train\nnames: [a]\nir: visible -> infrared\nlabels: {images: annotations}\n").unwrap();
        assert_eq!(ds.ir, ComponentSwap::new("visible", "infrared"));
        assert_eq!(ds.labels, ComponentSwap::new("images", "annotations"));
        let short = parse(dir.path(), "train: images/train\nnames: [a]\nir: thermal\n").unwrap();
        assert_eq!(short.ir, ComponentSwap::new("images", "thermal"));
        assert!(
            parse(
                dir.path(),
                "train: images/train\nnames: [a]\nir: a/b -> c\n"
            )
            .is_err()
        );
    }

    #[test]
    fn ir_norm_key() {
        let dir = dataset_dir();
        let default = parse(dir.path(), "train: images/train\nnames: [a]\n").unwrap();
        assert_eq!(default.ir_norm, IrNorm::Auto);
        let fixed = parse(
            dir.path(),
            "train: images/train\nnames: [a]\nir_norm: fixed:27000,31000\n",
        )
        .unwrap();
        assert_eq!(
            fixed.ir_norm,
            IrNorm::Fixed {
                lo: 27000,
                hi: 31000
            }
        );
        let err = parse(
            dir.path(),
            "train: images/train\nnames: [a]\nir_norm: stretch\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("data.yaml") && err.contains("`ir_norm`") && err.contains("stretch"),
            "{err}"
        );
    }

    #[test]
    fn list_files_resolve_against_root_and_dot_slash_against_the_list() {
        let dir = dataset_dir();
        std::fs::create_dir_all(dir.path().join("splits")).unwrap();
        std::fs::write(
            dir.path().join("splits/train.txt"),
            "images/train/a.jpg\n\n./b.jpg\n",
        )
        .unwrap();
        let ds = parse(dir.path(), "train: splits/train.txt\nnames: [a]\n").unwrap();
        let Source::List { images, .. } = &ds.splits[0].sources[0] else {
            panic!()
        };
        assert_eq!(images[0], (dir.path().join("images/train/a.jpg"), 1));
        assert_eq!(images[1], (dir.path().join("splits/b.jpg"), 3));
    }

    #[test]
    fn bare_folder_needs_images() {
        let dir = dataset_dir();
        let ds = Dataset::open(dir.path(), Some(vec!["person".into()])).unwrap();
        assert_eq!(ds.splits[0].name, "all");
        let empty = tempfile::tempdir().unwrap();
        assert!(Dataset::open(empty.path(), None).is_err());
    }
}
