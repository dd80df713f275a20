//! Our policies against libCacheSim's (the PyPI `libcachesim` package) on generated
//! traces: LRU and FIFO miss ratios equal exactly, SIEVE, S3-FIFO and CLOCK within 0.002
//! (they match exactly on these traces too).

use std::process::Command;

use pipewright_cache::replay::{simulate, write_oracle_general, zipf_trace};
use pipewright_cache::PolicyKind;

const SCRIPT: &str = r#"
import sys, libcachesim as lcs
path, sizes = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
classes = {"lru": lcs.LRU, "fifo": lcs.FIFO, "sieve": lcs.Sieve, "s3fifo": lcs.S3FIFO, "clock": lcs.Clock}
for name, cls in classes.items():
    for size in sizes:
        p = lcs.ReaderInitParam()
        p.ignore_obj_size = True
        r = lcs.TraceReader(trace=path, trace_type=lcs.TraceType.ORACLE_GENERAL_TRACE, reader_init_params=p)
        print(name, size, repr(cls(cache_size=size).process_trace(r)[0]))
"#;

fn libcachesim_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import libcachesim"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("PIPEWRIGHT_REQUIRE_LIBCACHESIM").as_deref() == Ok("1") {
            panic!("python3 -c 'import libcachesim' failed and PIPEWRIGHT_REQUIRE_LIBCACHESIM=1 (pip install libcachesim)");
        }
        println!("skipped: libcachesim not importable by python3 (PyPI package libcachesim)");
    }
    ok
}

#[test]
fn miss_ratios_match_libcachesim() {
    if !libcachesim_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut compared = 0;
    for (objects, requests, alpha, seed) in [
        (5_000u64, 100_000usize, 0.99, 1u64),
        (20_000, 100_000, 0.7, 2),
        (2_000, 50_000, 1.2, 3),
    ] {
        let ids = zipf_trace(objects, requests, alpha, seed);
        let path = dir.path().join(format!("zipf{alpha}.oracleGeneral"));
        write_oracle_general(&path, &ids).unwrap();
        let sizes = [
            objects as usize / 100,
            objects as usize / 10,
            objects as usize / 4,
        ];
        let sizes_arg: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
        let out = Command::new("python3")
            .args(["-c", SCRIPT])
            .arg(&path)
            .arg(sizes_arg.join(","))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let policy: PolicyKind = f[0].parse().unwrap();
            let size: usize = f[1].parse().unwrap();
            let theirs: f64 = f[2].parse().unwrap();
            let ours = simulate(&ids, policy, size);
            let diff = (ours.miss_ratio() - theirs).abs();
            println!("zipf({alpha}) {policy:>6} size {size:>5}: ours {:.6} libcachesim {theirs:.6} diff {diff:.6}", ours.miss_ratio());
            match policy {
                PolicyKind::Lru | PolicyKind::Fifo => assert_eq!(
                    ours.misses,
                    (theirs * requests as f64).round() as u64,
                    "{policy} size {size}: miss counts differ"
                ),
                PolicyKind::Sieve | PolicyKind::S3Fifo | PolicyKind::Clock => {
                    assert!(
                        diff <= 0.002,
                        "{policy} size {size}: {} vs {theirs}",
                        ours.miss_ratio()
                    )
                }
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 45);
}
