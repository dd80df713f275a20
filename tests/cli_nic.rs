//! `pipewright nic run --config FILE` as a user runs it: inside the data-plane
//! namespace of a harness topology, on its existing veth VF (AF_XDP) and underlay,
//! with rules written as TOML; a guest pings the kernel vxlan peer through it.
//!
//! Needs root and network namespaces; without them it prints a SKIP line (and fails
//! instead when `PIPEWRIGHT_REQUIRE_NETNS=1`).
// The tests run the `pipewright` binary, which needs the feature `cli`.
#![cfg(all(feature = "nic", feature = "cli"))]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pipewright::nic::host::{Host, UnderlaySpec, VfKind, VfSpec, VniSpec};
use pipewright::nic::wire::MacAddr;
use pipewright_testkit::PING;

#[test]
fn nic_run_serves_a_guest_from_a_config_file() {
    if !(pipewright_testkit::netns()
        && pipewright_testkit::af_xdp()
        && pipewright_testkit::io_uring()
        && PING.require())
    {
        return;
    }
    let prefix = format!("pwc{}", std::process::id() % 100_000);
    let host = Host::builder(&prefix)
        .vf(VfSpec::new(
            100,
            MacAddr([2, 0, 0, 0, 1, 2]),
            "10.100.0.2/24".parse().unwrap(),
            VfKind::Veth,
        ))
        .underlay(UnderlaySpec::new(
            "192.168.78.1/30".parse().unwrap(),
            "192.168.78.2/30".parse().unwrap(),
            1600,
        ))
        .remote_vni(VniSpec::new(100, "10.100.0.1/24".parse().unwrap()))
        .build()
        .unwrap();
    let ul = host.underlay.as_ref().unwrap();
    let vf = &host.vfs[0];
    let dir = std::env::temp_dir().join(format!("pipewright-cli-nic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tunnel = format!(
        "{{ kind = \"vxlan\", vni = 100, outer_src = \"{}\", outer_dst = \"{}\", outer_src_mac = \"{}\", outer_dst_mac = \"{}\" }}",
        ul.dp_ip.addr(),
        ul.remote_ip.addr(),
        ul.dp_mac,
        ul.remote_mac
    );
    let rules = format!(
        r#"
[[vf]]
vf = 0
mac = "{guest_mac}"
ips = ["10.100.0.2"]

[[neighbour]]
vf = 0
ip = "10.100.0.1"
mac = "{remote_mac}"

[[egress]]
id = 1
vf = 0
dst_prefix = "10.100.0.0/24"
ethertype = 0x0800
action = "encap"
tunnel = {tunnel}

[[egress]]
id = 2
vf = 0
dst_mac = "ff:ff:ff:ff:ff:ff"
ethertype = 0x0806
action = "answer-arp"

[[egress]]
id = 3
vf = 0
ethertype = 0x0806
action = "encap"
tunnel = {tunnel}

[[ingress]]
id = 10
kind = "vxlan"
vni = 100
outer_dst = "{dp_ip}"
action = "deliver"
vf = 0
"#,
        guest_mac = vf.guest_mac,
        remote_mac = host.vnis[0].mac,
        dp_ip = ul.dp_ip.addr(),
    );
    std::fs::write(dir.join("rules.toml"), rules).unwrap();
    let config = format!(
        "[underlay]\nlocal = \"{}\"\n\n[[port]]\nvf = 0\nkind = \"afxdp\"\nifname = \"{}\"\n\nrules_file = \"rules.toml\"\n",
        ul.dp_ip.addr(),
        vf.vf_ifname
    );
    // `rules_file` is a top-level key: it must come before the first table.
    let config = format!(
        "rules_file = \"rules.toml\"\n{}",
        config.replace("\nrules_file = \"rules.toml\"\n", "")
    );
    let config_path = dir.join("nic.toml");
    std::fs::write(&config_path, config).unwrap();

    // Runs until the test stops it with SIGTERM once the pings are done (`--seconds`
    // only bounds it if the test goes away), however long it takes to start.
    let mut child = Command::new("ip")
        .args(["netns", "exec", host.dp_ns().name()])
        .arg(env!("CARGO_BIN_EXE_pipewright"))
        .args([
            "nic",
            "run",
            "--seconds",
            "600",
            "--refresh-ms",
            "200",
            "--config",
        ])
        .arg(&config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both outputs are read to the end on their own threads (so the child never
    // blocks on a full pipe); each tells when its line has come.
    let (seen, lines) = std::sync::mpsc::channel();
    let reader = |pipe: Box<dyn std::io::Read + Send>, marker: &'static str| {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if line.contains(marker) {
                    let _ = seen.send(marker);
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        })
    };
    // `data plane running:` (stderr) comes once the data plane is up; the first frame
    // of the live view (stdout) once the SIGTERM handler is installed.
    let stderr = reader(
        Box::new(child.stderr.take().unwrap()),
        "data plane running:",
    );
    let stdout = reader(Box::new(child.stdout.take().unwrap()), "pipewright nic run");
    drop(seen);
    let mut waiting = vec!["data plane running:", "pipewright nic run"];
    // The deadline only turns a hang into a failure.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(marker) => waiting.retain(|m| *m != marker),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
                panic!("`nic run` never printed {waiting:?} ({status}):\n{stdout}\n{stderr}");
            }
        }
    }
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &vf.guest_ns,
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            "10.100.0.1",
        ])
        .output()
        .unwrap();
    // `ip netns exec` ran the binary in its own place: this is `nic run`'s pid.
    let term = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(term.success(), "kill -TERM {}: {term}", child.id());
    // It stops at its next refresh; the deadline only turns a hang into a failure.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(
        status.success(),
        "nic run did not stop cleanly on SIGTERM ({status}):\n{stdout}\n{stderr}"
    );
    assert!(
        ping.status.success(),
        "ping through `nic run`: {}\n{stdout}\n{stderr}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert!(stdout.contains("stopped cleanly: true"), "{stdout}");
    assert!(stdout.contains("VF 0: rx "), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nic_run_reports_a_bad_config_clearly() {
    let dir = std::env::temp_dir().join(format!("pipewright-cli-nic-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("nic.toml");
    std::fs::write(
        &path,
        "[underlay]\nlocal = \"10.0.0.1\"\n[[port]]\nvf = 0\nkind = \"sriov\"\nifname = \"x\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pipewright"))
        .args(["nic", "run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sriov"),
        "the error names the bad value: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
