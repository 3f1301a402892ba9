//! The pipeline file: its sections, parsing and validation.
//!
//! Sections other than `train` are read with serde (unknown keys are errors with their line).
//! The `train` section is a hyp.yaml laid out as an indented block: its lines are handed to
//! [`Hyp::from_yaml_str`] in place (other lines blanked), so its keys, types, ranges and
//! messages are exactly hyp.yaml's and the lines in messages are the pipeline file's.

use std::path::{Path, PathBuf};

use fusekit_hyp::{Fusion, Hyp, HypWarning, Imgsz};
use fusekit_lint::{LevelSelectors, Levels};
use fusekit_stages::{cache, lint, split};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::PipelineError;

/// A parsed and validated pipeline file.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The file it was read from.
    pub path: PathBuf,
    /// Name of the run folder (`name:`, default: the file stem).
    pub name: String,
    /// The dataset (data yaml or folder), resolved against the pipeline file's folder.
    pub data: PathBuf,
    /// Folder of pipeline runs (`runs:`, default `runs/pipeline`, relative to the working
    /// directory); the run folder is `runs/NAME`.
    pub runs: PathBuf,
    /// How to generate the dataset when it is missing.
    pub synth: Option<SynthSection>,
    /// The training size, stated once (`imgsz:`, default 640): lint measures LBL011 at it,
    /// the cache stores images at it, training and predict use it.
    pub imgsz: Imgsz,
    /// The lint stage.
    pub lint: lint::Settings,
    /// The split stage.
    pub split: split::Settings,
    /// The cache stage.
    pub cache: cache::Settings,
    /// The train stages (one per fusion mode), when the file has a `train` section.
    pub train: Option<TrainSection>,
    /// The predict stages (one per trained fusion mode), when the file has a `predict` section.
    pub predict: Option<PredictSection>,
    /// Ultralytics keys in the train section that fusekit ignores.
    pub warnings: Vec<HypWarning>,
}

impl Pipeline {
    /// The run folder: `runs/NAME`.
    pub fn run_dir(&self) -> PathBuf {
        self.runs.join(&self.name)
    }
}

/// `synth:`: options of `fusekit synth` for generating a missing dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthSection {
    /// Number of pairs.
    #[serde(default = "default_pairs")]
    pub pairs: usize,
    /// Image size, WIDTHxHEIGHT.
    #[serde(default = "default_size")]
    pub size: String,
    /// Number of scenes.
    #[serde(default = "default_scenes")]
    pub scenes: usize,
    /// Random seed.
    #[serde(default)]
    pub seed: u64,
}

impl SynthSection {
    /// The generator's options (`size` as WIDTHxHEIGHT).
    pub fn options(&self) -> Result<fusekit_synth::SynthOptions, String> {
        let (width, height) =
            fusekit_synth::parse_size(&self.size).map_err(|e| format!("synth.size: {e}"))?;
        Ok(fusekit_synth::SynthOptions {
            pairs: self.pairs,
            width,
            height,
            seed: self.seed,
            scenes: self.scenes,
            ..fusekit_synth::SynthOptions::default()
        })
    }
}

fn default_pairs() -> usize {
    200
}
fn default_size() -> String {
    "640x512".into()
}
fn default_scenes() -> usize {
    10
}

/// `train:`: hyp.yaml keys, plus the fusion modes to train and run options.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSection {
    /// Hyperparameters (fusion set per stage; `imgsz` is the pipeline's).
    pub hyp: Hyp,
    /// Fusion modes, one train stage each, in file order.
    pub fusions: Vec<Fusion>,
    /// Train on the first N samples only.
    pub limit: Option<usize>,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
}

/// `predict:`: options of `fusekit predict`, run on every pair of the split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictSection {
    /// Minimum confidence.
    #[serde(default = "default_conf")]
    pub conf: f32,
    /// NMS IoU threshold.
    #[serde(default = "default_iou")]
    pub iou: f32,
    /// Write a picture per pair.
    #[serde(default = "default_true")]
    pub images: bool,
    /// Detections kept per pair.
    #[serde(default = "default_max_det")]
    pub max_det: usize,
    /// Ultralytics' `save_txt`: YOLO rows per pair under `labels/`. Like the other `save_*`
    /// keys, left out of the stage's fingerprint when off, so files without them keep theirs.
    #[serde(default, skip_serializing_if = "is_false")]
    pub save_txt: bool,
    /// Ultralytics' `save_conf`: each `save_txt` row ends with its score.
    #[serde(default, skip_serializing_if = "is_false")]
    pub save_conf: bool,
    /// Ultralytics' `save_json`: COCO-style `predictions.json`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub save_json: bool,
}

fn is_false(value: &bool) -> bool {
    !value
}

fn default_max_det() -> usize {
    300
}

fn default_conf() -> f32 {
    0.25
}
fn default_iou() -> f32 {
    0.7
}
fn default_true() -> bool {
    true
}

/// The file as serde reads it; `train` is parsed separately.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Option<String>,
    data: PathBuf,
    runs: Option<PathBuf>,
    synth: Option<SynthSection>,
    #[serde(default)]
    imgsz: Imgsz,
    #[serde(default)]
    lint: lint::Settings,
    #[serde(default)]
    split: split::Settings,
    #[serde(default)]
    cache: cache::Settings,
    train: Option<IgnoredAny>,
    predict: Option<PredictSection>,
}

/// Keys of the train section that are the pipeline's, not hyp.yaml's.
const TRAIN_KEYS: &[&str] = &["fusion", "limit", "device"];

/// The pipeline's own train keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainExtras {
    fusion: Option<OneOrMany>,
    limit: Option<usize>,
    device: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl Pipeline {
    /// Reads and validates a pipeline file.
    pub fn load(path: &Path) -> Result<Pipeline, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|source| PipelineError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates pipeline text; `path` names it in messages and anchors `data`.
    pub fn parse(text: &str, path: &Path) -> Result<Pipeline, PipelineError> {
        let invalid = |keys: &[&str], message: String| PipelineError::Invalid {
            path: path.to_path_buf(),
            line: key_line(text, keys),
            key: keys.join("."),
            message,
        };
        for section in ["lint", "cache", "train", "predict"] {
            let nested = key_line(text, &[section, "imgsz"]);
            if nested.is_some() && nested != key_line(text, &[section]) {
                return Err(invalid(
                    &[section, "imgsz"],
                    "imgsz is stated once, at the top level of the pipeline file (`imgsz: 640`); \
                     every stage takes it from there"
                        .into(),
                ));
            }
        }
        let raw: RawPipeline = serde_saphyr::from_str(text).map_err(|e| yaml_error(path, &e))?;
        let name = match raw.name {
            Some(name) => name,
            None => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "pipeline".into()),
        };
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(invalid(
                &["name"],
                format!("must be a folder name, not `{name}`"),
            ));
        }
        let base = path.parent().unwrap_or(Path::new(""));
        let data = base.join(&raw.data);

        check_lint(&raw.lint, &invalid)?;
        check_split(&raw.split, &invalid)?;
        if let Some(synth) = &raw.synth
            && (synth.pairs == 0 || synth.scenes == 0)
        {
            return Err(invalid(
                &["synth", "pairs"],
                "pairs and scenes must be at least 1".into(),
            ));
        }
        if let Some(predict) = &raw.predict
            && !((0.0..=1.0).contains(&predict.conf) && (0.0..=1.0).contains(&predict.iou))
        {
            return Err(invalid(
                &["predict", "conf"],
                "conf and iou must lie between 0 and 1".into(),
            ));
        }
        let (train, warnings) = match raw.train {
            Some(_) => {
                let (train, warnings) = parse_train(text, path, raw.imgsz)?;
                (Some(train), warnings)
            }
            None => (None, Vec::new()),
        };
        if raw.predict.is_some() && train.is_none() {
            return Err(invalid(
                &["predict"],
                "needs a train section (it predicts with the trained weights)".into(),
            ));
        }
        Ok(Pipeline {
            path: path.to_path_buf(),
            name,
            data,
            runs: raw.runs.unwrap_or_else(|| PathBuf::from("runs/pipeline")),
            synth: raw.synth,
            imgsz: raw.imgsz,
            lint: raw.lint,
            split: raw.split,
            cache: raw.cache,
            train,
            predict: raw.predict,
            warnings,
        })
    }
}

type Invalid<'a> = dyn Fn(&[&str], String) -> PipelineError + 'a;

fn check_lint(lint: &lint::Settings, invalid: &Invalid<'_>) -> Result<(), PipelineError> {
    for (key, list) in [
        ("deny", &lint.deny),
        ("warn", &lint.warn),
        ("allow", &lint.allow),
        ("accept", &lint.accept),
    ] {
        let selectors = LevelSelectors {
            deny: list.clone(),
            ..LevelSelectors::default()
        };
        Levels::default()
            .apply(&selectors)
            .map_err(|e| invalid(&["lint", key], e.to_string()))?;
    }
    Ok(())
}

fn check_split(split: &split::Settings, invalid: &Invalid<'_>) -> Result<(), PipelineError> {
    for (key, share) in [("val", split.val), ("test", split.test)] {
        if !(0.0..1.0).contains(&share) {
            return Err(invalid(
                &["split", key],
                format!("must be in [0, 1), not {share}"),
            ));
        }
    }
    if split.val + split.test >= 1.0 {
        return Err(invalid(
            &["split", "test"],
            format!(
                "val + test must leave a share for train (got {} + {})",
                split.val, split.test
            ),
        ));
    }
    if let Some(group) = &split.group {
        if split.group_by_folder {
            return Err(invalid(
                &["split", "group_by_folder"],
                "cannot be combined with `group`".into(),
            ));
        }
        regex::Regex::new(group)
            .map_err(|e| invalid(&["split", "group"], format!("is not a valid regex: {e}")))?;
    }
    Ok(())
}

/// Parses the train section: the pipeline's own keys with serde, the rest as a hyp.yaml.
fn parse_train(
    text: &str,
    path: &Path,
    imgsz: Imgsz,
) -> Result<(TrainSection, Vec<HypWarning>), PipelineError> {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| top_key(l) == Some("train")) else {
        return Err(PipelineError::Invalid {
            path: path.to_path_buf(),
            line: None,
            key: "train".into(),
            message: "write the section as an indented block".into(),
        });
    };
    let after_colon = lines[start].split_once(':').map_or("", |(_, v)| v);
    let inline = strip_comment(after_colon).trim();
    if !inline.is_empty() {
        return Err(PipelineError::Invalid {
            path: path.to_path_buf(),
            line: Some(start as u64 + 1),
            key: "train".into(),
            message: "write the section as an indented block of hyp.yaml keys, one per line".into(),
        });
    }
    // The block: the lines after `train:` up to the next top-level line.
    let end = (start + 1..lines.len())
        .find(|&i| is_top_level(lines[i]))
        .unwrap_or(lines.len());
    let indent = (start + 1..end)
        .filter(|&i| is_content(lines[i]))
        .map(|i| indentation(lines[i]))
        .next()
        .unwrap_or(0);
    // Which block lines belong to one of the pipeline's own keys.
    let mut own = vec![false; lines.len()];
    let mut current_own = false;
    for i in start + 1..end {
        let line = lines[i];
        if is_content(line) && indentation(line) == indent && !line.trim_start().starts_with('-') {
            let key = line.trim_start().split(':').next().unwrap_or("").trim();
            current_own = TRAIN_KEYS.contains(&key);
        }
        own[i] = current_own;
    }
    let section = |want_own: bool| -> String {
        let mut out = String::new();
        for (i, line) in lines.iter().enumerate() {
            if i > start && i < end && own[i] == want_own {
                out.push_str(line.get(indent.min(indentation(line))..).unwrap_or(""));
            }
            out.push('\n');
        }
        out
    };
    let extras: TrainExtras =
        serde_saphyr::from_str(&section(true)).map_err(|e| yaml_error(path, &e))?;
    let loaded = Hyp::from_yaml_str(&section(false), path)?;
    let mut hyp = loaded.hyp;
    let invalid = |key: &str, message: String| PipelineError::Invalid {
        path: path.to_path_buf(),
        line: key_line(text, &["train", key]),
        key: format!("train.{key}"),
        message,
    };
    hyp.imgsz = imgsz.get();
    let words = match extras.fusion {
        None => vec![hyp.fusion.to_string()],
        Some(OneOrMany::One(word)) => vec![word],
        Some(OneOrMany::Many(words)) => words,
    };
    let mut fusions = Vec::new();
    for word in &words {
        let fusion: Fusion = word
            .parse()
            .map_err(|e: fusekit_hyp::ParseNameError| invalid("fusion", e.to_string()))?;
        if fusions.contains(&fusion) {
            return Err(invalid("fusion", format!("lists `{fusion}` twice")));
        }
        fusions.push(fusion);
    }
    if fusions.is_empty() {
        return Err(invalid("fusion", "lists no fusion mode".into()));
    }
    if extras.limit == Some(0) {
        return Err(invalid("limit", "must be at least 1".into()));
    }
    Ok((
        TrainSection {
            hyp,
            fusions,
            limit: extras.limit,
            device: extras.device.unwrap_or_else(|| "auto".into()),
        },
        loaded.warnings,
    ))
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Not blank and not only a comment.
fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#')
}

/// A content line at column 0 (a top-level key, or a document marker).
fn is_top_level(line: &str) -> bool {
    is_content(line) && indentation(line) == 0
}

/// The key of a top-level `key:` line.
fn top_key(line: &str) -> Option<&str> {
    if !is_top_level(line) {
        return None;
    }
    let (key, _) = line.split_once(':')?;
    Some(key.trim().trim_matches(|c| c == '"' || c == '\''))
}

fn strip_comment(text: &str) -> &str {
    match text.find(" #") {
        Some(i) => &text[..i],
        None if text.trim_start().starts_with('#') => "",
        None => text,
    }
}

/// The 1-based line of a key given as a path (`["split", "val"]`) in block-style YAML: the
/// nested key when it is written, else its section's line.
pub fn key_line(text: &str, keys: &[&str]) -> Option<u64> {
    let lines: Vec<&str> = text.lines().collect();
    let (first, rest) = keys.split_first()?;
    let start = lines.iter().position(|l| top_key(l) == Some(*first))?;
    let Some(child) = rest.first() else {
        return Some(start as u64 + 1);
    };
    let end = (start + 1..lines.len())
        .find(|&i| is_top_level(lines[i]))
        .unwrap_or(lines.len());
    let indent = (start + 1..end)
        .filter(|&i| is_content(lines[i]))
        .map(|i| indentation(lines[i]))
        .next();
    let found = (start + 1..end).find(|&i| {
        let line = lines[i];
        Some(indentation(line)) == indent
            && line.trim_start().split(':').next().map(str::trim) == Some(*child)
    });
    Some(found.unwrap_or(start) as u64 + 1)
}

/// A serde-saphyr error as a [`PipelineError`] with its line.
fn yaml_error(path: &Path, error: &serde_saphyr::Error) -> PipelineError {
    let line = error.location().filter(|l| l.line() > 0).map(|l| l.line());
    let mut message = error.without_snippet().to_string();
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    PipelineError::Yaml {
        path: path.to_path_buf(),
        line,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
name: demo
data: ../datasets/sample
lint:
  accept: [PAIR001]
split:
  val: 0.25
  group: '^(\\d{2})'
imgsz: 64
cache:
  mode: ram
train:
  fusion: [mid, rgb]
  epochs: 2
  lr0: 0.02
  limit: 8
predict:
  conf: 0.1
";

    fn parse(text: &str) -> Result<Pipeline, PipelineError> {
        Pipeline::parse(text, Path::new("pipelines/p.yaml"))
    }

    #[test]
    fn reads_every_section() {
        let p = parse(SAMPLE).unwrap();
        assert_eq!(p.name, "demo");
        assert_eq!(p.data, Path::new("pipelines/../datasets/sample"));
        assert_eq!(p.run_dir(), Path::new("runs/pipeline/demo"));
        assert_eq!(p.split.val, 0.25);
        assert!(p.lint.accepts("PAIR001", "PAIR"));
        assert!(!p.lint.accepts("PAIR002", "PAIR"));
        let train = p.train.unwrap();
        assert_eq!(train.fusions, vec![Fusion::Mid, Fusion::Rgb]);
        assert_eq!(train.hyp.epochs, 2);
        assert_eq!(train.hyp.lr0, 0.02);
        assert_eq!(p.imgsz.get(), 64);
        assert_eq!(train.hyp.imgsz, 64, "imgsz is the pipeline's");
        assert_eq!(train.limit, Some(8));
        let predict = p.predict.unwrap();
        assert_eq!(predict.conf, 0.1);
        assert!(!predict.save_txt && !predict.save_conf && !predict.save_json);
    }

    #[test]
    fn predict_save_keys_are_read_and_stay_out_of_the_fingerprint_when_off() {
        let on = parse(&SAMPLE.replace(
            "  conf: 0.1\n",
            "  conf: 0.1\n  save_txt: true\n  save_conf: true\n  save_json: true\n",
        ))
        .unwrap()
        .predict
        .unwrap();
        assert!(on.save_txt && on.save_conf && on.save_json);
        let off = parse(SAMPLE).unwrap().predict.unwrap();
        let keys = serde_json::to_value(&off).unwrap();
        assert_eq!(
            keys.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["conf", "images", "iou", "max_det"],
            "a section without save_* serialises as before"
        );
        assert_ne!(serde_json::to_value(&on).unwrap(), keys);
    }

    #[test]
    fn errors_name_file_key_and_line() {
        // (text replaced, replacement, expected message)
        let cases = [
            (
                "lr0: 0.02",
                "lr_0: 0.02",
                "p.yaml:14: unknown key `lr_0`; did you mean `lr0`?",
            ),
            ("epochs: 2", "epochs: two", "p.yaml:13: `epochs` must be"),
            (
                "val: 0.25",
                "val: 1.5",
                "p.yaml:6: `split.val` must be in [0, 1)",
            ),
            ("[PAIR001]", "[PAIR999]", "p.yaml:4: `lint.accept`"),
            ("imgsz: 64", "imgzs: 64", "p.yaml:8: unknown field `imgzs`"),
            (
                "[mid, rgb]",
                "[mid, fused]",
                "p.yaml:12: `train.fusion` `fused` is not a",
            ),
            (
                "limit: 8",
                "limit: 8\n  imgsz: 128",
                "p.yaml:16: `train.imgsz` imgsz is stated once, at the top level",
            ),
            (
                "imgsz: 64",
                "imgsz: 100",
                "p.yaml:8: imgsz must be a positive multiple of 32",
            ),
        ];
        for (from, to, expected) in cases {
            let message = parse(&SAMPLE.replace(from, to)).unwrap_err().to_string();
            assert!(
                message.contains(expected),
                "{message}\nexpected: {expected}"
            );
        }
    }

    #[test]
    fn key_lines_follow_nesting() {
        assert_eq!(key_line(SAMPLE, &["split", "group"]), Some(7));
        assert_eq!(key_line(SAMPLE, &["split", "test"]), Some(5));
        assert_eq!(key_line(SAMPLE, &["predict"]), Some(16));
        assert_eq!(key_line(SAMPLE, &["nothing"]), None);
    }
}
