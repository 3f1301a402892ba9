//! Writing a split: list files, a derived data yaml and `split.json`, each atomically, with
//! `split.json` last. Files fusekit did not write (or that were edited since) are never
//! overwritten without `--force`, and then kept as `NAME.bak`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use atomic_write_file::AtomicWriteFile;
use fusekit_dataset::{Dataset, IrNorm, Source};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::assign::{PerSide, Side, SplitParams, Stratify};
use crate::{GroupBy, Plan};

/// The manifest file name.
pub const SPLIT_JSON: &str = "split.json";
/// The derived data yaml's file name.
pub const SPLIT_YAML: &str = "split.yaml";
const MANIFEST_VERSION: u32 = 1;
/// Bumped whenever `assign` can place a pair differently for the same inputs, so that a split
/// written by an older fusekit is not taken as current.
const ASSIGN_VERSION: u32 = 1;

/// A split that cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// Writing would replace a file the user owns.
    #[error("{0}")]
    Refused(String),
}

/// The lock file that keeps two splits from writing into one folder at once (hidden; empty).
const SPLIT_LOCK: &str = ".fusekit-split.lock";

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SplitError + '_ {
    move |source| SplitError::Io {
        path: path.to_path_buf(),
        cause: source,
    }
}

/// What [`write_split`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The files on disk already hold this split; nothing was written.
    UpToDate,
    /// These files were written.
    Written(Vec<PathBuf>),
}

/// Counts per side, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideCounts {
    /// Training set.
    pub train: u64,
    /// Validation set.
    pub val: u64,
    /// Test set.
    pub test: u64,
}

impl From<PerSide> for SideCounts {
    fn from([train, val, test]: PerSide) -> Self {
        Self { train, val, test }
    }
}

/// Boxes of one class per side, with the achieved shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassSplit {
    /// Class id.
    pub id: u32,
    /// Class name (`classN` when the dataset has no names).
    pub name: String,
    /// Boxes per side.
    pub boxes: SideCounts,
    /// val boxes / all boxes of the class.
    pub val_share: f64,
    /// test boxes / all boxes of the class.
    pub test_share: f64,
}

/// Two pairs in different groups with near-identical IR pictures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NearDuplicatePair {
    /// One RGB path.
    pub a: String,
    /// The other.
    pub b: String,
    /// Differing perceptual-hash bits.
    pub bits: u32,
    /// On different sides.
    pub across: bool,
}

/// `split.json`: how the split was made, what it achieved, and the hashes that tell whether it
/// is still current.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// xxh3 (hex) of the parameters and every input record (paths, groups, boxes, hashes).
    pub inputs_hash: String,
    /// Seed.
    pub seed: u64,
    /// Requested val share.
    pub val: f64,
    /// Requested test share.
    pub test: f64,
    /// `classes` or `none`.
    pub stratify: String,
    /// Grouping mode.
    pub group: String,
    /// Near-duplicate threshold in bits, when searched.
    pub near_dup_bits: Option<u32>,
    /// Near-duplicates kept together.
    pub dedupe_groups: bool,
    /// Pairs per side.
    pub pairs: SideCounts,
    /// Groups (after joining duplicates) per side.
    pub groups: SideCounts,
    /// Background pairs per side.
    pub background: SideCounts,
    /// Per-class boxes and achieved shares.
    pub classes: Vec<ClassSplit>,
    /// Pairs left out because lint found errors in them.
    pub excluded: Vec<String>,
    /// The side of every group (empty when each pair is its own group: the lists say it).
    pub group_sides: BTreeMap<String, Side>,
    /// Pairs whose stem the group regex did not match (groups of one).
    pub ungrouped: usize,
    /// Groups joined because RGB or IR files were byte-identical.
    pub content_joins: usize,
    /// Near-duplicate IR pictures across groups.
    pub near_duplicates: Vec<NearDuplicatePair>,
    /// Every file written, with its xxh3 (hex).
    pub files: BTreeMap<String, String>,
}

impl Manifest {
    /// The manifest for a plan (without `files`).
    pub fn new(dataset: &Dataset, plan: &Plan, params: &SplitParams, group_by: &GroupBy) -> Self {
        let stats = &plan.assignment.stats;
        let classes = stats
            .boxes
            .iter()
            .map(|(&id, &per_side)| {
                let total = per_side.iter().sum::<u64>().max(1) as f64;
                ClassSplit {
                    id,
                    name: dataset
                        .names
                        .get(id as usize)
                        .cloned()
                        .unwrap_or_else(|| format!("class{id}")),
                    boxes: per_side.into(),
                    val_share: per_side[1] as f64 / total,
                    test_share: per_side[2] as f64 / total,
                }
            })
            .collect();
        let near_duplicates = plan
            .assignment
            .near_duplicates
            .iter()
            .map(|d| NearDuplicatePair {
                a: plan.records[d.a].path.clone(),
                b: plan.records[d.b].path.clone(),
                bits: d.bits,
                across: d.across,
            })
            .collect();
        Self {
            version: MANIFEST_VERSION,
            inputs_hash: format!("{:016x}", inputs_hash(plan, params, group_by)),
            seed: params.seed,
            val: params.val,
            test: params.test,
            stratify: match params.stratify {
                Stratify::Classes => "classes".into(),
                Stratify::None => "none".into(),
            },
            group: group_by.describe(),
            near_dup_bits: params.near_dup_bits,
            dedupe_groups: params.dedupe_near,
            pairs: stats.pairs.into(),
            groups: stats.groups.into(),
            background: stats.background.into(),
            classes,
            excluded: plan.excluded.clone(),
            group_sides: match group_by {
                GroupBy::Pair => BTreeMap::new(),
                _ => plan
                    .records
                    .iter()
                    .zip(&plan.assignment.sides)
                    .map(|(r, s)| (r.group.clone(), *s))
                    .collect(),
            },
            ungrouped: plan.ungrouped,
            content_joins: plan.assignment.content_joins,
            near_duplicates,
            files: BTreeMap::new(),
        }
    }
}

fn inputs_hash(plan: &Plan, params: &SplitParams, group_by: &GroupBy) -> u64 {
    let mut hasher = Xxh3::new();
    hasher.update(&ASSIGN_VERSION.to_le_bytes());
    let settings = serde_json::to_string(params).expect("parameters serialise");
    hasher.update(settings.as_bytes());
    hasher.update(group_by.describe().as_bytes());
    let mut records: Vec<_> = plan.records.iter().collect();
    records.sort_by(|a, b| a.path.cmp(&b.path));
    for r in records {
        let line = format!(
            "{}\t{}\t{:?}\t{:?}\t{:?}\n",
            r.path, r.group, r.boxes, r.content, r.ir_hash
        );
        hasher.update(line.as_bytes());
    }
    for path in &plan.excluded {
        hasher.update(path.as_bytes());
    }
    hasher.digest()
}

#[derive(Serialize)]
struct DerivedYaml<'a> {
    train: &'a str,
    val: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    test: Option<&'a str>,
    names: BTreeMap<usize, &'a str>,
    ir: String,
    labels: String,
    /// The data yaml's `ir_norm`, carried over when it is not the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    ir_norm: Option<String>,
}

/// Writes the split of `plan` into `out` (created if needed), or does nothing when the files
/// there already hold it. Returns the outcome and the manifest.
pub fn write_split(
    dataset: &Dataset,
    plan: &Plan,
    params: &SplitParams,
    group_by: &GroupBy,
    out: &Path,
    force: bool,
) -> Result<(WriteOutcome, Manifest), SplitError> {
    let mut manifest = Manifest::new(dataset, plan, params, group_by);
    std::fs::create_dir_all(out).map_err(io_error(out))?;
    // One split at a time per folder: the manifest read below decides which files are ours,
    // so another process writing between that read and our writes would make us refuse its
    // files, or theirs ours. The lock is released when the file closes.
    let lock_path = out.join(SPLIT_LOCK);
    let lock = std::fs::File::create(&lock_path).map_err(io_error(&lock_path))?;
    lock.lock().map_err(io_error(&lock_path))?;
    let previous: Option<Manifest> = std::fs::read(out.join(SPLIT_JSON))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let owned = |name: &str, bytes: &[u8]| {
        previous
            .as_ref()
            .and_then(|m| m.files.get(name))
            .is_some_and(|hash| *hash == hex(xxh3_64(bytes)))
    };
    if let Some(previous) = &previous
        && previous.inputs_hash == manifest.inputs_hash
        && previous
            .files
            .iter()
            .all(|(name, _)| std::fs::read(out.join(name)).is_ok_and(|b| owned(name, &b)))
    {
        return Ok((WriteOutcome::UpToDate, previous.clone()));
    }

    let files = render_files(dataset, plan, params, out)?;
    let inputs: Vec<PathBuf> = dataset
        .splits
        .iter()
        .flat_map(|s| &s.sources)
        .filter_map(|s| match s {
            Source::List { file, .. } => std::path::absolute(file).ok(),
            Source::Folder(_) => None,
        })
        .collect();
    let mut targets: Vec<String> = files.iter().map(|(name, _)| name.clone()).collect();
    targets.push(SPLIT_JSON.into());
    // A stale test.txt of an earlier split with a test share is ours to remove.
    let stale: Vec<String> = previous
        .as_ref()
        .map(|m| {
            m.files
                .keys()
                .filter(|name| !targets.contains(name))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    for name in targets.iter().chain(&stale) {
        let path = out.join(name);
        if std::path::absolute(&path).is_ok_and(|p| inputs.contains(&p)) {
            return Err(SplitError::Refused(format!(
                "{} is one of the dataset's own split lists; choose another --out",
                path.display()
            )));
        }
        let Ok(existing) = std::fs::read(&path) else {
            continue;
        };
        let ours = owned(name, &existing) || (name == SPLIT_JSON && previous.is_some());
        if !ours {
            if !force {
                return Err(SplitError::Refused(format!(
                    "{} exists and was not written by this split tool (or was edited since); pass --force to replace it (the old file is kept as {name}.bak)",
                    path.display()
                )));
            }
            let backup = out.join(format!("{name}.bak"));
            std::fs::rename(&path, &backup).map_err(io_error(&path))?;
        } else if stale.contains(name) {
            std::fs::remove_file(&path).map_err(io_error(&path))?;
        }
    }
    let mut written = Vec::new();
    for (name, text) in &files {
        write_atomically(&out.join(name), text.as_bytes())?;
        manifest
            .files
            .insert(name.clone(), hex(xxh3_64(text.as_bytes())));
        written.push(out.join(name));
    }
    let json = serde_json::to_string_pretty(&manifest).expect("a manifest serialises") + "\n";
    write_atomically(&out.join(SPLIT_JSON), json.as_bytes())?;
    written.push(out.join(SPLIT_JSON));
    Ok((WriteOutcome::Written(written), manifest))
}

fn hex(hash: u64) -> String {
    format!("{hash:016x}")
}

/// The list files and derived yaml, by file name.
fn render_files(
    dataset: &Dataset,
    plan: &Plan,
    params: &SplitParams,
    out: &Path,
) -> Result<Vec<(String, String)>, SplitError> {
    let root = std::path::absolute(&dataset.root).map_err(io_error(&dataset.root))?;
    let out_abs = std::path::absolute(out).map_err(io_error(out))?;
    let to_root = pathdiff::diff_paths(&root, &out_abs).unwrap_or(root.clone());
    let prefix: String = to_root
        .components()
        .map(|c| format!("{}/", c.as_os_str().to_string_lossy()))
        .collect();
    let mut sides: Vec<Side> = vec![Side::Train, Side::Val];
    if params.test > 0.0 {
        sides.push(Side::Test);
    }
    let mut files = Vec::new();
    for &side in &sides {
        let mut lines: Vec<&str> = plan
            .records
            .iter()
            .zip(&plan.assignment.sides)
            .filter(|(_, s)| **s == side)
            .map(|(r, _)| r.path.as_str())
            .collect();
        lines.sort_unstable();
        // `./` lines are relative to the list file, for fusekit and Ultralytics alike.
        let text: String = lines
            .iter()
            .map(|path| format!("./{prefix}{path}\n"))
            .collect();
        files.push((format!("{}.txt", side.as_str()), text));
    }
    let test_file = format!("{}.txt", Side::Test.as_str());
    let yaml = DerivedYaml {
        train: "train.txt",
        val: "val.txt",
        test: (params.test > 0.0).then_some(test_file.as_str()),
        names: dataset
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (i, n.as_str()))
            .collect(),
        ir: dataset.ir.to_string(),
        labels: dataset.labels.to_string(),
        ir_norm: (dataset.ir_norm != IrNorm::default()).then(|| dataset.ir_norm.to_string()),
    };
    let body = serde_saphyr::to_string(&yaml)
        .map_err(|e| SplitError::Refused(format!("cannot write {SPLIT_YAML}: {e}")))?;
    let header = format!(
        "# Written by `fusekit split` (seed {}, val {}, test {}); see {SPLIT_JSON}.\n# Lists hold ./-relative paths, read the same way by fusekit and Ultralytics.\n",
        params.seed, params.val, params.test
    );
    files.push((SPLIT_YAML.to_owned(), header + &body));
    Ok(files)
}

/// Replaces `path` with `bytes` atomically and durably (a uniquely named temporary file, so
/// two runs at once do not write into each other's).
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SplitError> {
    let mut file = AtomicWriteFile::open(path).map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.commit().map_err(io_error(path))
}
