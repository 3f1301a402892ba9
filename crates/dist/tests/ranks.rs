//! Real multi-process tests: the test binary re-runs itself as the ranks of a loopback group.
//!
//! Each test below starts `rank_worker` (ignored in ordinary runs) in child processes with
//! torchrun's variables set and a role that selects what the rank does; a rank checks its own
//! results and exits non-zero on any mismatch.

use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use fusekit_dist::{Backend, DistError, ProcessGroup, Rendezvous};
use tch::nn::{self, Module, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};

const ROLE: &str = "FUSEKIT_DIST_TEST_ROLE";
const TIMEOUT_MS: &str = "FUSEKIT_DIST_TEST_TIMEOUT_MS";
const MARKER: &str = "FUSEKIT_DIST_TEST_MARKER";

/// A rank of the tests below; run only by them, as a child process.
#[test]
#[ignore = "a rank of the multi-process tests, started by them"]
fn rank_worker() {
    let role = std::env::var(ROLE).expect("rank_worker is started by the multi-process tests");
    let timeout_ms: u64 = std::env::var(TIMEOUT_MS).unwrap().parse().unwrap();
    let pg = ProcessGroup::from_env(Duration::from_millis(timeout_ms))
        .expect("joining the group")
        .expect("WORLD_SIZE > 1");
    match role.as_str() {
        "collectives" => collectives(&pg),
        "var_store" => var_store(&pg),
        "sync_bn" => sync_bn(&pg),
        "dies" => dies(pg),
        "stalls" => stalls(pg),
        "bench" => bench(&pg),
        other => panic!("unknown role {other}"),
    }
}

fn collectives(pg: &ProcessGroup) {
    let r = pg.rank() as f64;
    pg.barrier().unwrap();

    // Mixed dtypes and shapes, several buckets' worth of order.
    let mut ts = vec![
        Tensor::from_slice(&[r + 1.0, 2.0 * (r + 1.0)]),
        Tensor::full(
            [3, 2],
            10 * (pg.rank() as i64 + 1),
            (Kind::Int64, Device::Cpu),
        ),
        Tensor::full([4], r, (Kind::Float, Device::Cpu)),
    ];
    pg.all_reduce_mean(&mut ts).unwrap();
    assert_eq!(Vec::<f64>::try_from(&ts[0]).unwrap(), vec![1.5, 3.0]);
    assert_eq!(Vec::<i64>::try_from(&ts[1].view(-1)).unwrap(), vec![15; 6]);
    assert_eq!(Vec::<f32>::try_from(&ts[2]).unwrap(), vec![0.5; 4]);

    let mut sums = vec![Tensor::from_slice(&[r, 1.0])];
    pg.all_reduce_sum(&mut sums).unwrap();
    assert_eq!(Vec::<f64>::try_from(&sums[0]).unwrap(), vec![1.0, 2.0]);

    // Broadcast from rank 1: everyone ends with rank 1's tensors.
    let mut b = vec![
        Tensor::full([2, 2], r + 7.0, (Kind::Float, Device::Cpu)),
        Tensor::from_slice(&[pg.rank() as i64 * 3]),
    ];
    pg.broadcast(&mut b, 1).unwrap();
    assert_eq!(Vec::<f32>::try_from(&b[0].view(-1)).unwrap(), vec![8.0; 4]);
    assert_eq!(Vec::<i64>::try_from(&b[1]).unwrap(), vec![3]);

    let gathered = pg
        .all_gather(&Tensor::full([2, 3], r, (Kind::Float, Device::Cpu)))
        .unwrap();
    assert_eq!(gathered.len(), 2);
    for (rank, t) in gathered.iter().enumerate() {
        assert_eq!(t.size(), vec![2, 3]);
        assert_eq!(
            Vec::<f32>::try_from(&t.view(-1)).unwrap(),
            vec![rank as f32; 6]
        );
    }

    // Mismatched shapes: a clear error on every rank, and the group stays usable.
    let len = 2 + pg.rank() as i64;
    let err = pg
        .all_gather(&Tensor::zeros([len], (Kind::Float, Device::Cpu)))
        .unwrap_err();
    assert!(
        matches!(
            err,
            DistError::Collective {
                op: "all_gather",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("same dtype and shape"), "{err}");
    assert!(pg.broadcast(&mut [], 2).is_err(), "root outside the world");
    pg.barrier().unwrap();
}

/// A small model with a batch-norm buffer, plus a parameter that gets no gradient.
fn seeded_store(seed: i64) -> (nn::VarStore, nn::SequentialT) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let net = nn::seq_t()
        .add(nn::linear(&root / "fc1", 5, 8, Default::default()))
        .add(nn::batch_norm1d(&root / "bn", 8, Default::default()))
        .add_fn(|x| x.tanh())
        .add(nn::linear(&root / "fc2", 8, 3, Default::default()));
    let _unused = root.randn_standard("unused", &[2]);
    (vs, net)
}

fn batch(seed: i64, n: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    (
        Tensor::randn([n, 5], (Kind::Float, Device::Cpu)),
        Tensor::randn([n, 3], (Kind::Float, Device::Cpu)),
    )
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn assert_stores_close(a: &nn::VarStore, b: &nn::VarStore, tol: f64, what: &str) {
    let (va, vb) = (a.variables(), b.variables());
    assert_eq!(va.len(), vb.len());
    for (name, t) in &va {
        let d = max_diff(t, &vb[name]);
        assert!(d <= tol, "{what}: {name} differs by {d}");
    }
}

/// Three SGD steps (momentum 0.9, lr 0.1) on `loss`, summing gradients over `pg` if given.
fn sgd_steps(vs: &nn::VarStore, pg: Option<&ProcessGroup>, loss: impl Fn() -> Tensor) {
    let mut opt = nn::Sgd {
        momentum: 0.9,
        ..Default::default()
    }
    .build(vs, 0.1)
    .unwrap();
    for _ in 0..3 {
        opt.zero_grad();
        loss().backward();
        if let Some(pg) = pg {
            pg.sum_gradients(vs).unwrap();
        }
        opt.step();
    }
}

fn var_store(pg: &ProcessGroup) {
    const B: i64 = 4;
    let rank = pg.rank() as i64;
    // Different initial weights per rank; rank 0's win, buffers included.
    let (vs, net) = seeded_store(100 + rank);
    let (reference, _) = seeded_store(100);
    tch::no_grad(|| {
        for (name, t) in vs.variables() {
            if name.ends_with("running_mean") {
                let _ = t.shallow_clone().fill_(rank as f64 + 0.5);
            }
        }
        for (name, t) in reference.variables() {
            if name.ends_with("running_mean") {
                let _ = t.shallow_clone().fill_(0.5);
            }
        }
    });
    pg.broadcast_var_store(&vs, 0).unwrap();
    assert_stores_close(&vs, &reference, 0.0, "after broadcast");

    // Per-rank gradients of the local batch, summed.
    let (x, y) = batch(7 + rank, B);
    let loss = net.forward_t(&x, true).mse_loss(&y, tch::Reduction::Sum);
    loss.backward();
    pg.sum_gradients(&vs).unwrap();
    let mut expected: Vec<(String, Tensor)> = Vec::new();
    for r in 0..2 {
        let (local, local_net) = seeded_store(100);
        let (x, y) = batch(7 + r, B);
        local_net
            .forward_t(&x, true)
            .mse_loss(&y, tch::Reduction::Sum)
            .backward();
        for (name, t) in local.variables() {
            if !t.requires_grad() {
                continue;
            }
            let g = if t.grad().defined() {
                t.grad()
            } else {
                t.zeros_like()
            };
            match expected.iter_mut().find(|(n, _)| *n == name) {
                Some((_, acc)) => *acc = &*acc + g,
                None => expected.push((name, g)),
            }
        }
    }
    let vars = vs.variables();
    assert_eq!(expected.len(), vs.trainable_variables().len());
    assert!(
        expected.iter().any(|(n, _)| n == "unused"),
        "the unused parameter is checked"
    );
    for (name, want) in &expected {
        let got = vars[name].grad();
        assert!(got.defined(), "{name} has no gradient after summing");
        let d = max_diff(&got, want);
        assert!(
            d <= 1e-6,
            "gradient of {name} differs from the ranks' sum by {d}"
        );
    }

    // 2 ranks with batch B step to the same weights as 1 rank with 2B, for a loss that adds up
    // over samples as the detector's does. (Batch norm normalises per batch, so this compares
    // a model without it.)
    let linear = |seed: i64| {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = nn::linear(vs.root(), 5, 3, Default::default());
        (vs, net)
    };
    let (dist_vs, dist_net) = linear(200 + rank);
    pg.broadcast_var_store(&dist_vs, 0).unwrap();
    let (x, y) = batch(30 + rank, B);
    sgd_steps(&dist_vs, Some(pg), || {
        dist_net.forward(&x).mse_loss(&y, tch::Reduction::Sum)
    });
    let (single_vs, single_net) = linear(200);
    let (x0, y0) = batch(30, B);
    let (x1, y1) = batch(31, B);
    let (x, y) = (Tensor::cat(&[x0, x1], 0), Tensor::cat(&[y0, y1], 0));
    sgd_steps(&single_vs, None, || {
        single_net.forward(&x).mse_loss(&y, tch::Reduction::Sum)
    });
    assert_stores_close(&dist_vs, &single_vs, 1e-5, "2 ranks x B vs 1 rank x 2B");
}

/// A convolution, batch norm (synchronised when `pg` is given), SiLU, pooling and a linear
/// layer: the pieces of the detector that batch norm couples across a batch.
struct BnNet {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    fc: nn::Linear,
}

/// PyTorch's batch-norm defaults, which `nn::BatchNormConfig::default()` also uses.
const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

impl BnNet {
    fn seeded(seed: i64) -> (nn::VarStore, Self) {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let net = Self {
            conv: nn::conv2d(&root / "conv", 3, 6, 3, Default::default()),
            bn: nn::batch_norm2d(&root / "bn", 6, Default::default()),
            fc: nn::linear(&root / "fc", 6, 2, Default::default()),
        };
        (vs, net)
    }

    fn forward(&self, x: &Tensor, pg: Option<&ProcessGroup>) -> Tensor {
        let h = x.apply(&self.conv);
        let h = match pg {
            Some(pg) => pg
                .sync_batch_norm(&h, &self.bn, BN_EPS, BN_MOMENTUM)
                .unwrap(),
            None => h.apply_t(&self.bn, true),
        };
        h.silu()
            .mean_dim(&[2i64, 3][..], false, Kind::Float)
            .apply(&self.fc)
    }
}

fn images(seed: i64, n: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    (
        Tensor::randn([n, 3, 6, 5], (Kind::Float, Device::Cpu)) * 2.0 + 0.5,
        Tensor::randn([n, 2], (Kind::Float, Device::Cpu)),
    )
}

/// Synchronised batch norm on 2 ranks equals libtorch's own batch norm on both ranks' inputs
/// together: outputs, input and parameter gradients, running statistics, and the weights after
/// several optimizer steps (the criterion, with batch norm in the model).
fn sync_bn(pg: &ProcessGroup) {
    const B: i64 = 3;
    let rank = pg.rank() as i64;
    // Uneven local batches (3 and 4 images): counts are merged exactly, not averaged.
    let sizes = [B, B + 1];
    let (x0, _) = images(50, sizes[0]);
    let (x1, _) = images(51, sizes[1]);
    let w = Tensor::randn([sizes[0] + sizes[1], 3, 6, 5], (Kind::Float, Device::Cpu));
    let bn_vs = nn::VarStore::new(Device::Cpu);
    let bn = nn::batch_norm2d(bn_vs.root(), 3, Default::default());
    let reference_vs = nn::VarStore::new(Device::Cpu);
    let reference_bn = nn::batch_norm2d(reference_vs.root(), 3, Default::default());
    tch::no_grad(|| {
        for store in [&bn_vs, &reference_vs] {
            for (name, t) in store.variables() {
                let seed = name.len() as i64;
                tch::manual_seed(seed);
                let value = Tensor::rand(t.size(), (Kind::Float, Device::Cpu)) + 0.5;
                t.shallow_clone().copy_(&value);
            }
        }
    });
    let x = [&x0, &x1][rank as usize].detach().set_requires_grad(true);
    let local_w = w.narrow(
        0,
        if rank == 0 { 0 } else { sizes[0] },
        sizes[rank as usize],
    );
    let y = pg.sync_batch_norm(&x, &bn, BN_EPS, BN_MOMENTUM).unwrap();
    (&y * &local_w).sum(Kind::Float).backward();

    let all = Tensor::cat(&[&x0, &x1], 0).set_requires_grad(true);
    let reference = all.apply_t(&reference_bn, true);
    (&reference * &w).sum(Kind::Float).backward();
    let start = if rank == 0 { 0 } else { sizes[0] };
    let local = |t: &Tensor| t.narrow(0, start, sizes[rank as usize]);
    let close = |what: &str, a: &Tensor, b: &Tensor| {
        let d = max_diff(a, b);
        assert!(
            d <= 1e-5,
            "{what} differs from libtorch's batch norm by {d}"
        );
    };
    close("output", &y, &local(&reference));
    close("input gradient", &x.grad(), &local(&all.grad()));
    close("running mean", &bn.running_mean, &reference_bn.running_mean);
    close("running var", &bn.running_var, &reference_bn.running_var);
    // Parameter gradients are local: their sum over ranks is the whole batch's.
    let mut params = vec![
        bn.ws.as_ref().unwrap().grad().copy(),
        bn.bs.as_ref().unwrap().grad().copy(),
    ];
    pg.all_reduce_sum(&mut params).unwrap();
    close(
        "weight gradient",
        &params[0],
        &reference_bn.ws.as_ref().unwrap().grad(),
    );
    close(
        "bias gradient",
        &params[1],
        &reference_bn.bs.as_ref().unwrap().grad(),
    );

    // A layer without affine parameters.
    let plain = nn::BatchNormConfig {
        affine: false,
        ..Default::default()
    };
    let bn = nn::batch_norm2d(nn::VarStore::new(Device::Cpu).root(), 3, plain);
    let reference_bn = nn::batch_norm2d(nn::VarStore::new(Device::Cpu).root(), 3, plain);
    let y = pg.sync_batch_norm(&x, &bn, BN_EPS, BN_MOMENTUM).unwrap();
    let reference = tch::no_grad(|| all.apply_t(&reference_bn, true));
    close("output without affine parameters", &y, &local(&reference));
    close(
        "running var without affine parameters",
        &bn.running_var,
        &reference_bn.running_var,
    );

    // 2 ranks x B with synchronised batch norm step like 1 rank x 2B with plain batch norm.
    let (dist_vs, dist_net) = BnNet::seeded(300 + rank);
    pg.broadcast_var_store(&dist_vs, 0).unwrap();
    let (x, y) = images(60 + rank, B);
    sgd_steps(&dist_vs, Some(pg), || {
        dist_net
            .forward(&x, Some(pg))
            .mse_loss(&y, tch::Reduction::Sum)
    });
    let (single_vs, single_net) = BnNet::seeded(300);
    let (xa, ya) = images(60, B);
    let (xb, yb) = images(61, B);
    let (x, y) = (Tensor::cat(&[xa, xb], 0), Tensor::cat(&[ya, yb], 0));
    sgd_steps(&single_vs, None, || {
        single_net
            .forward(&x, None)
            .mse_loss(&y, tch::Reduction::Sum)
    });
    assert_stores_close(
        &dist_vs,
        &single_vs,
        1e-5,
        "2 ranks x B (sync BN) vs 1 rank x 2B",
    );
}

/// Both ranks all-reduce until one fails; the survivor closes its group and reports.
fn dies(pg: ProcessGroup) {
    pg.barrier().unwrap();
    let marker = PathBuf::from(std::env::var(MARKER).unwrap());
    let mut t = vec![Tensor::ones([1024], (Kind::Float, Device::Cpu))];
    let mut first = true;
    loop {
        if let Err(err) = pg.all_reduce_mean(&mut t) {
            drop(pg);
            eprintln!("RANK ERROR: {err}");
            std::process::exit(17);
        }
        if first && pg.rank() == 1 {
            std::fs::write(&marker, b"ready").unwrap();
            first = false;
        }
    }
}

/// Rank 1 stays alive but stops taking part; rank 0's collective must time out, not hang.
fn stalls(pg: ProcessGroup) {
    pg.barrier().unwrap();
    if pg.rank() == 1 {
        std::thread::sleep(Duration::from_secs(120));
        return;
    }
    let start = Instant::now();
    let err = pg
        .all_reduce_sum(&mut [Tensor::ones([8], (Kind::Float, Device::Cpu))])
        .unwrap_err();
    // Closing the group after the failure must not wait on the stalled peer either.
    drop(pg);
    eprintln!("RANK ERROR after {:?}: {err}", start.elapsed());
    std::process::exit(17);
}

/// All-reduce of a yolov8n-sized gradient set (3.16 M floats in 129 tensors).
fn bench(pg: &ProcessGroup) {
    let sizes: Vec<i64> = (0..129).map(|i| 3_157_200 / 129 + (i % 3)).collect();
    let mut grads: Vec<Tensor> = sizes
        .iter()
        .map(|&n| Tensor::ones([n], (Kind::Float, Device::Cpu)))
        .collect();
    pg.all_reduce_mean(&mut grads).unwrap();
    let runs = 20;
    let start = Instant::now();
    for _ in 0..runs {
        pg.all_reduce_mean(&mut grads).unwrap();
    }
    if pg.is_main() {
        println!(
            "BENCH all_reduce_mean of {} floats in {} tensors: {:.2} ms",
            sizes.iter().sum::<i64>(),
            sizes.len(),
            start.elapsed().as_secs_f64() * 1e3 / runs as f64
        );
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Rank {
    child: Child,
    log: PathBuf,
}

impl Rank {
    fn log(&self) -> String {
        let mut s = String::new();
        File::open(&self.log)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    }
}

/// The arguments that make the test binary run only `rank_worker`.
const WORKER_ARGS: [&str; 5] = [
    "--exact",
    "rank_worker",
    "--ignored",
    "--nocapture",
    "--test-threads=1",
];

/// `program` (the test binary, or a launcher of it) with a rank's role, logging into `log`.
fn worker_command(program: &str, dir: &Path, role: &str, timeout_ms: u64, log: &Path) -> Command {
    let out = File::create(log).unwrap();
    let mut cmd = Command::new(program);
    cmd.env(ROLE, role)
        .env(TIMEOUT_MS, timeout_ms.to_string())
        .env(MARKER, dir.join("ready"))
        .env("OMP_NUM_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    cmd
}

/// Starts ranks 0 and 1 of a loopback group on a free port.
fn spawn_pair(dir: &Path, role: &str, timeout_ms: u64) -> Vec<Rank> {
    let port = free_port();
    let exe = std::env::current_exe().unwrap();
    (0..2)
        .map(|rank| {
            let log = dir.join(format!("rank{rank}.log"));
            let child = worker_command(exe.to_str().unwrap(), dir, role, timeout_ms, &log)
                .args(WORKER_ARGS)
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env_remove("TORCHELASTIC_USE_AGENT_STORE")
                .spawn()
                .unwrap();
            Rank { child, log }
        })
        .collect()
}

/// Polls `child` until it exits or `limit` passes (then `None`).
fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() <= limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Waits for rank `index` to exit, killing every rank and failing after `limit`.
fn wait(ranks: &mut [Rank], index: usize, limit: Duration) -> ExitStatus {
    if let Some(status) = wait_for(&mut ranks[index].child, limit) {
        return status;
    }
    for r in ranks.iter_mut() {
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
    panic!(
        "rank {index} still running after {limit:?}:\n{}",
        ranks[index].log()
    );
}

fn run_ok(role: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut ranks = spawn_pair(dir.path(), role, 20_000);
    let logs: Vec<String> = (0..2)
        .map(|i| {
            let status = wait(&mut ranks, i, Duration::from_secs(60));
            let log = ranks[i].log();
            assert!(status.success(), "rank {i} failed ({status}):\n{log}");
            log
        })
        .collect();
    logs
}

#[test]
fn two_ranks_all_reduce_broadcast_all_gather() {
    run_ok("collectives");
}

#[test]
fn two_ranks_var_store_broadcast_and_gradient_sum() {
    run_ok("var_store");
}

#[test]
fn two_ranks_sync_batch_norm_matches_one_batch() {
    run_ok("sync_bn");
}

/// `cargo test -p fusekit-dist --test ranks -- --ignored --exact all_reduce_bench --nocapture`
#[test]
#[ignore = "timing only"]
fn all_reduce_bench() {
    for log in run_ok("bench") {
        // libtest prints "test rank_worker ... " before the rank's own output on that line.
        if let Some(at) = log.find("BENCH") {
            println!("{}", log[at..].lines().next().unwrap_or_default());
        }
    }
}

/// Checks that rank 0 exited through its error report for `op`; returns its log.
fn reported_error(rank: &Rank, status: ExitStatus, op: &str) -> String {
    let log = rank.log();
    assert_eq!(
        status.code(),
        Some(17),
        "rank 0 did not report an error:\n{log}"
    );
    assert!(
        log.contains(&format!("{op} failed on rank 0 of 2")),
        "{log}"
    );
    log
}

#[test]
fn killed_rank_makes_the_other_fail_within_timeout() {
    let timeout = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let mut ranks = spawn_pair(dir.path(), "dies", timeout.as_millis() as u64);
    let start = Instant::now();
    while !dir.path().join("ready").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "rank 1 never got going:\n{}",
            ranks[1].log()
        );
        if let Some(status) = ranks[0].child.try_wait().unwrap() {
            panic!("rank 0 ended early ({status}):\n{}", ranks[0].log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ranks[1].child.kill().unwrap();
    ranks[1].child.wait().unwrap();
    let killed = Instant::now();
    let status = wait(&mut ranks, 0, timeout + Duration::from_secs(5));
    reported_error(&ranks[0], status, "all_reduce_mean");
    assert!(
        killed.elapsed() <= timeout + Duration::from_secs(2),
        "took {:?}",
        killed.elapsed()
    );
}

#[test]
fn missing_peer_fails_init_within_timeout() {
    let rdzv = Rendezvous {
        rank: 0,
        world_size: 2,
        local_rank: 0,
        master_addr: "127.0.0.1".to_owned(),
        master_port: free_port(),
        host_store: true,
        prefix: "test/".to_owned(),
    };
    let timeout = Duration::from_secs(2);
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || tx.send(ProcessGroup::new(&rdzv, timeout).map(|_| ())));
    let result = rx
        .recv_timeout(timeout + Duration::from_secs(10))
        .expect("init hung past its timeout");
    let err = result.expect_err("init succeeded without its peer");
    assert!(
        matches!(
            err,
            DistError::Init {
                rank: 0,
                world_size: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(start.elapsed() < timeout + Duration::from_secs(10));
}

/// NCCL on a CUDA device this process does not have (any device on a machine without one, as
/// here) fails at once with a typed error, without contacting the store or crashing.
#[test]
fn nccl_without_its_cuda_device_fails_before_contacting_anyone() {
    let available = tch::Cuda::device_count().max(0) as usize;
    let rdzv = Rendezvous {
        rank: 1,
        world_size: 2,
        local_rank: available,
        master_addr: "127.0.0.1".to_owned(),
        // Nobody listens there: contacting the store would wait for the whole timeout.
        master_port: free_port(),
        host_store: false,
        prefix: "test/".to_owned(),
    };
    let start = Instant::now();
    let err = ProcessGroup::new_with(&rdzv, Duration::from_secs(30), Backend::Nccl).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    match Backend::Nccl.check_built() {
        Ok(()) => {
            assert!(
                matches!(err, DistError::NoCudaDevice { local_rank, available: a }
                    if local_rank == available && a == available),
                "{err}"
            );
            assert!(err.to_string().contains("needs CUDA device"), "{err}");
        }
        Err(DistError::NcclUnavailable { reason }) => {
            assert!(
                matches!(&err, DistError::NcclUnavailable { reason: r } if *r == reason),
                "{err}"
            );
        }
        Err(other) => panic!("unexpected {other}"),
    }
}

#[test]
fn stalled_rank_makes_the_other_fail_within_timeout() {
    let timeout = Duration::from_secs(3);
    let dir = tempfile::tempdir().unwrap();
    let mut ranks = spawn_pair(dir.path(), "stalls", timeout.as_millis() as u64);
    let status = wait(&mut ranks, 0, timeout + Duration::from_secs(30));
    let _ = ranks[1].child.kill();
    let _ = ranks[1].child.wait();
    let log = reported_error(&ranks[0], status, "all_reduce_sum");
    let took: f64 = log
        .split("RANK ERROR after ")
        .nth(1)
        .and_then(|rest| rest.split("s:").next())
        .and_then(|secs| secs.parse().ok())
        .unwrap_or_else(|| panic!("no timing in:\n{log}"));
    assert!(
        (2.5..=5.0).contains(&took),
        "timed out after {took} s, configured 3 s:\n{log}"
    );
}

/// torchrun (from the torch wheel libtorch comes from) launches the ranks: its environment
/// contract, with its agent hosting the store, is what `ProcessGroup::from_env` reads.
#[test]
fn torchrun_launches_two_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("torchrun.log");
    let mut child = worker_command("python3", dir.path(), "collectives", 20_000, &log)
        .args(["-m", "torch.distributed.run", "--nproc_per_node=2"])
        .arg(format!("--master_port={}", free_port()))
        // Each rank's output in a file of its own: on a shared stream the ranks' lines can
        // interleave mid-line.
        .arg(format!("--log-dir={}", dir.path().join("ranks").display()))
        .arg("--redirects=3")
        .arg("--no-python")
        .arg(std::env::current_exe().unwrap())
        .args(WORKER_ARGS)
        .current_dir(dir.path())
        .spawn()
        .expect("python3 (with the torch that libtorch comes from) runs torchrun");
    let Some(status) = wait_for(&mut child, Duration::from_secs(120)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("torchrun still running after 120 s");
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "torchrun failed ({status}):\n{text}");
    let outputs = rank_outputs(&dir.path().join("ranks"));
    assert_eq!(outputs.len(), 2, "one stdout.log per rank:\n{text}");
    for output in &outputs {
        assert!(output.contains("test result: ok. 1 passed"), "{output}");
    }
}

/// The contents of every `stdout.log` below `dir` (torchrun's `--log-dir` layout).
fn rank_outputs(dir: &Path) -> Vec<String> {
    let mut outputs = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            outputs.extend(rank_outputs(&path));
        } else if path.file_name().is_some_and(|name| name == "stdout.log") {
            outputs.push(std::fs::read_to_string(&path).unwrap());
        }
    }
    outputs
}
