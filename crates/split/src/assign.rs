//! The split itself: a pure function from pair records to sides.
//!
//! 1. Pairs are joined into components: same group key, byte-identical RGB or IR content, and
//!    (with `dedupe_near`) near-identical IR pictures. A component is never split.
//! 2. Each component gets a position `u` from a seeded xxh3 hash of its smallest group key, so a
//!    component keeps its position however the dataset grows.
//! 3. Components are stratified by their dominant class (most boxes; background when none), and
//!    within each stratum sorted by `u` and cut where the cumulative weight (boxes, or pairs for
//!    background and `--stratify none`) reaches the val, then the test share. A new pair moves
//!    only components next to a cut.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Which side of the split a pair is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Training set.
    Train,
    /// Validation set.
    Val,
    /// Test set.
    Test,
}

impl Side {
    /// All sides, in file order.
    pub const ALL: [Side; 3] = [Side::Train, Side::Val, Side::Test];

    /// `train`, `val` or `test`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Train => "train",
            Side::Val => "val",
            Side::Test => "test",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How components are stratified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stratify {
    /// By dominant class, with background images as their own stratum.
    #[default]
    Classes,
    /// One stratum, weighted by pairs.
    None,
}

impl std::str::FromStr for Stratify {
    type Err = String;

    /// `classes` or `none`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "classes" => Ok(Stratify::Classes),
            "none" => Ok(Stratify::None),
            other => Err(format!(
                "stratify must be `classes` or `none`, not `{other}`"
            )),
        }
    }
}

/// One pair to split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitRecord {
    /// The RGB image, relative to the dataset root, `/`-separated: the pair's identity.
    pub path: String,
    /// The group key; pairs with equal keys stay together.
    pub group: String,
    /// Boxes per class, sorted by class.
    pub boxes: Vec<(u32, u32)>,
    /// Content identities of the RGB and IR files (equal exactly when the bytes are, as
    /// `fusekit_lint::PairFacts::content`).
    pub content: Option<(u64, u64)>,
    /// Perceptual hash of the IR image.
    pub ir_hash: Option<u64>,
}

/// Split parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitParams {
    /// Share of the weight for val.
    pub val: f64,
    /// Share of the weight for test.
    pub test: f64,
    /// Seed of the position hash.
    pub seed: u64,
    /// Stratification.
    pub stratify: Stratify,
    /// Near-duplicate IR pictures: at most this many differing hash bits (None: not searched).
    pub near_dup_bits: Option<u32>,
    /// Keep near-duplicates on one side too.
    pub dedupe_near: bool,
}

/// Two pairs of different components whose IR pictures are near-identical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NearDuplicate {
    /// Record index of one pair.
    pub a: usize,
    /// Record index of the other.
    pub b: usize,
    /// Differing hash bits.
    pub bits: u32,
    /// They ended on different sides (a possible leak).
    pub across: bool,
}

/// Counts per side (train, val, test).
pub type PerSide = [u64; 3];

/// What the split achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SplitStats {
    /// Pairs per side.
    pub pairs: PerSide,
    /// Components (groups after joining duplicates) per side.
    pub groups: PerSide,
    /// Background pairs (no boxes) per side.
    pub background: PerSide,
    /// Boxes per class per side.
    pub boxes: BTreeMap<u32, PerSide>,
}

/// The result of [`assign`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The side of each record, in input order.
    pub sides: Vec<Side>,
    /// Components formed.
    pub components: usize,
    /// Joins made because RGB or IR files were byte-identical across groups.
    pub content_joins: usize,
    /// Near-duplicates between different groups.
    pub near_duplicates: Vec<NearDuplicate>,
    /// Counts.
    pub stats: SplitStats,
}

struct UnionFind {
    parent: Vec<usize>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        Self {
            parent: (0..n).collect(),
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    /// Joins the sets of `a` and `b`; true when they were apart.
    fn union(&mut self, a: usize, b: usize) -> bool {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return false;
        }
        let (low, high) = if ra < rb { (ra, rb) } else { (rb, ra) };
        self.parent[high] = low;
        true
    }
}

/// Buckets larger than this are not searched pairwise for near-duplicates.
const MAX_NEAR_BUCKET: usize = 512;

/// Splits `records`. The result depends only on the set of records and the parameters, not on
/// their order or the machine.
pub fn assign(records: &[SplitRecord], params: &SplitParams) -> Assignment {
    let n = records.len();
    let mut sets = UnionFind::new(n);
    let mut first_of_group: HashMap<&str, usize> = HashMap::with_capacity(n);
    for (i, record) in records.iter().enumerate() {
        if let Some(&first) = first_of_group.get(record.group.as_str()) {
            sets.union(first, i);
        } else {
            first_of_group.insert(&record.group, i);
        }
    }
    let mut content_joins = 0;
    let mut first_of_file: HashMap<u64, usize> = HashMap::new();
    for (i, record) in records.iter().enumerate() {
        let Some((rgb, ir)) = record.content else {
            continue;
        };
        for hash in [rgb, ir] {
            match first_of_file.get(&hash) {
                Some(&first) => content_joins += usize::from(sets.union(first, i)),
                None => {
                    first_of_file.insert(hash, i);
                }
            }
        }
    }
    let near = match params.near_dup_bits {
        Some(bits) => near_duplicate_candidates(records, bits, &mut sets),
        None => Vec::new(),
    };
    if params.dedupe_near {
        for &(a, b, _) in &near {
            sets.union(a, b);
        }
    }

    // Components, each keyed by its smallest group key (stable as the dataset grows).
    let roots: Vec<usize> = (0..n).map(|i| sets.find(i)).collect();
    let mut components: HashMap<usize, Component> = HashMap::new();
    for (i, record) in records.iter().enumerate() {
        let component = components
            .entry(roots[i])
            .or_insert_with(|| Component::new(&record.group));
        if record.group < component.key {
            component.key = record.group.clone();
        }
        component.pairs += 1;
        for &(class, count) in &record.boxes {
            *component.boxes.entry(class).or_insert(0) += u64::from(count);
        }
    }
    let mut strata: BTreeMap<Option<u32>, Vec<(u64, &str, usize)>> = BTreeMap::new();
    for (&root, component) in &components {
        let stratum = match params.stratify {
            Stratify::None => None,
            Stratify::Classes => component.dominant_class(),
        };
        let position = xxh3_64_with_seed(component.key.as_bytes(), params.seed);
        strata
            .entry(stratum)
            .or_default()
            .push((position, component.key.as_str(), root));
    }
    let mut side_of_root: HashMap<usize, Side> = HashMap::with_capacity(components.len());
    let mut orders: Vec<Vec<usize>> = Vec::with_capacity(strata.len());
    for (stratum, mut members) in strata {
        members.sort_unstable();
        let weight = |root: usize| {
            let c = &components[&root];
            match stratum {
                Some(_) => c.boxes.values().sum::<u64>() as f64,
                None => c.pairs as f64,
            }
        };
        let total: f64 = members.iter().map(|&(_, _, root)| weight(root)).sum();
        let (val_end, test_end) = (params.val * total, (params.val + params.test) * total);
        let mut cumulative = 0.0;
        for &(_, _, root) in &members {
            let w = weight(root);
            let middle = cumulative + w / 2.0;
            let side = if middle <= val_end && params.val > 0.0 {
                Side::Val
            } else if middle <= test_end && params.test > 0.0 {
                Side::Test
            } else {
                Side::Train
            };
            side_of_root.insert(root, side);
            cumulative += w;
        }
        orders.push(members.into_iter().map(|(_, _, root)| root).collect());
    }
    rebalance(&components, &orders, params, &mut side_of_root);

    let sides: Vec<Side> = roots.iter().map(|root| side_of_root[root]).collect();
    let mut stats = SplitStats::default();
    for (i, record) in records.iter().enumerate() {
        let s = sides[i].index();
        stats.pairs[s] += 1;
        if record.boxes.iter().all(|&(_, count)| count == 0) {
            stats.background[s] += 1;
        }
        for &(class, count) in &record.boxes {
            stats.boxes.entry(class).or_default()[s] += u64::from(count);
        }
    }
    for side in side_of_root.values() {
        stats.groups[side.index()] += 1;
    }
    let near_duplicates = near
        .into_iter()
        .map(|(a, b, bits)| NearDuplicate {
            a,
            b,
            bits,
            across: sides[a] != sides[b],
        })
        .collect();
    Assignment {
        sides,
        components: components.len(),
        content_joins,
        near_duplicates,
        stats,
    }
}

/// Components on each side of a cut that the rebalancing may move.
const REPAIR_WINDOW: usize = 12;
/// Upper bound on rebalancing moves.
const REPAIR_MOVES: usize = 64;

/// Improves the quantile cuts: moves or swaps components next to a cut (in hash order, so only
/// components a growing dataset would move anyway) while that brings every balanced quantity
/// closer to its share: boxes per class, background pairs and pairs (pairs alone with
/// `Stratify::None`). Deterministic: candidates are visited in hash order, the first best move
/// wins.
fn rebalance(
    components: &HashMap<usize, Component>,
    orders: &[Vec<usize>],
    params: &SplitParams,
    side_of_root: &mut HashMap<usize, Side>,
) {
    let classes: Vec<u32> = {
        let mut all: Vec<u32> = components
            .values()
            .flat_map(|c| c.boxes.keys().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    };
    let vector = |c: &Component| -> Vec<f64> {
        match params.stratify {
            Stratify::None => vec![c.pairs as f64],
            Stratify::Classes => {
                let mut v: Vec<f64> = classes
                    .iter()
                    .map(|k| c.boxes.get(k).copied().unwrap_or(0) as f64)
                    .collect();
                let background = if c.boxes.values().all(|&n| n == 0) {
                    c.pairs as f64
                } else {
                    0.0
                };
                v.push(background);
                v.push(c.pairs as f64);
                v
            }
        }
    };
    let vectors: HashMap<usize, Vec<f64>> = components
        .iter()
        .map(|(&root, c)| (root, vector(c)))
        .collect();
    let dims = vectors.values().next().map_or(0, Vec::len);
    let mut totals = vec![0.0; dims];
    let mut per_side = [vec![0.0; dims], vec![0.0; dims], vec![0.0; dims]];
    for (root, v) in &vectors {
        let side = side_of_root[root].index();
        for d in 0..dims {
            totals[d] += v[d];
            per_side[side][d] += v[d];
        }
    }
    let shares = [1.0 - params.val - params.test, params.val, params.test];
    let cost_of = |side: usize, amounts: &[f64]| -> f64 {
        (0..dims)
            .map(|d| ((amounts[d] - shares[side] * totals[d]) / totals[d].max(1.0)).powi(2))
            .sum()
    };
    // The candidate windows: around the end of val and the end of test in every stratum.
    let mut windows: Vec<Vec<usize>> = Vec::new();
    for order in orders {
        let val_end = order
            .iter()
            .take_while(|r| side_of_root[*r] == Side::Val)
            .count();
        let test_end = val_end
            + order[val_end..]
                .iter()
                .take_while(|r| side_of_root[*r] == Side::Test)
                .count();
        for cut in [val_end, test_end] {
            let window =
                &order[cut.saturating_sub(REPAIR_WINDOW)..(cut + REPAIR_WINDOW).min(order.len())];
            if window.len() > 1 {
                windows.push(window.to_vec());
            }
        }
    }
    let allowed = |side: Side| match side {
        Side::Train => true,
        Side::Val => params.val > 0.0,
        Side::Test => params.test > 0.0,
    };
    for _ in 0..REPAIR_MOVES {
        // (gain, moves) where moves are (root, to side).
        let mut best: Option<(f64, Vec<(usize, Side)>)> = None;
        let mut consider = |moves: Vec<(usize, Side)>, per_side: &[Vec<f64>; 3]| {
            let mut touched = [false; 3];
            let mut after = per_side.clone();
            for &(root, to) in &moves {
                let from = side_of_root[&root].index();
                touched[from] = true;
                touched[to.index()] = true;
                for d in 0..dims {
                    after[from][d] -= vectors[&root][d];
                    after[to.index()][d] += vectors[&root][d];
                }
            }
            let gain: f64 = (0..3)
                .filter(|&s| touched[s])
                .map(|s| cost_of(s, &per_side[s]) - cost_of(s, &after[s]))
                .sum();
            if gain > 1e-12 && best.as_ref().is_none_or(|(g, _)| gain > *g) {
                best = Some((gain, moves));
            }
        };
        for window in &windows {
            for (i, &a) in window.iter().enumerate() {
                let side_a = side_of_root[&a];
                for to in Side::ALL {
                    if to != side_a && allowed(to) {
                        consider(vec![(a, to)], &per_side);
                    }
                }
                for &b in &window[i + 1..] {
                    let side_b = side_of_root[&b];
                    if side_a != side_b {
                        consider(vec![(a, side_b), (b, side_a)], &per_side);
                    }
                }
            }
        }
        let Some((_, moves)) = best else { break };
        for (root, to) in moves {
            let from = side_of_root[&root].index();
            for d in 0..dims {
                per_side[from][d] -= vectors[&root][d];
                per_side[to.index()][d] += vectors[&root][d];
            }
            side_of_root.insert(root, to);
        }
    }
}

struct Component {
    key: String,
    pairs: u64,
    boxes: BTreeMap<u32, u64>,
}

impl Component {
    fn new(key: &str) -> Self {
        Self {
            key: key.to_owned(),
            pairs: 0,
            boxes: BTreeMap::new(),
        }
    }

    /// The class with most boxes (lowest id on ties); None for background.
    fn dominant_class(&self) -> Option<u32> {
        let mut best: Option<(u32, u64)> = None;
        for (&class, &count) in &self.boxes {
            if count > 0 && best.is_none_or(|(_, most)| count > most) {
                best = Some((class, count));
            }
        }
        best.map(|(class, _)| class)
    }
}

/// Pairs of records from different components (by group and content) whose IR hashes differ in
/// at most `bits` bits, each once, sorted. Found by splitting the hash into `bits + 1` bands:
/// two hashes that close agree on at least one band exactly.
fn near_duplicate_candidates(
    records: &[SplitRecord],
    bits: u32,
    sets: &mut UnionFind,
) -> Vec<(usize, usize, u32)> {
    let bands = (bits + 1).min(64);
    let width = 64 / bands;
    let mut found: HashSet<(usize, usize)> = HashSet::new();
    let mut out = Vec::new();
    for band in 0..bands {
        let shift = band * width;
        let len = if band + 1 == bands { 64 - shift } else { width };
        let mask = if len == 64 {
            u64::MAX
        } else {
            (1u64 << len) - 1
        };
        let mut buckets: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, record) in records.iter().enumerate() {
            if let Some(hash) = record.ir_hash {
                buckets.entry((hash >> shift) & mask).or_default().push(i);
            }
        }
        for members in buckets
            .values()
            .filter(|m| m.len() > 1 && m.len() <= MAX_NEAR_BUCKET)
        {
            for (k, &a) in members.iter().enumerate() {
                for &b in &members[k + 1..] {
                    let distance = (records[a].ir_hash.unwrap_or(0)
                        ^ records[b].ir_hash.unwrap_or(0))
                    .count_ones();
                    if distance <= bits && sets.find(a) != sets.find(b) && found.insert((a, b)) {
                        out.push((a, b, distance));
                    }
                }
            }
        }
    }
    out.sort_unstable();
    out
}
