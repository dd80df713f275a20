//! `pipewright nic run --config FILE` as a user runs it: inside the data-plane
//! namespace of a harness topology, on its existing veth VF (AF_XDP) and underlay,
//! with rules written as TOML; a guest pings the kernel vxlan peer through it.
//!
//! Needs root and network namespaces; without them it prints a SKIP line (and fails
//! instead when `PIPEWRIGHT_REQUIRE_NETNS=1`).
// The tests run the `pipewright` binary, which needs the feature `cli`.
#![cfg(all(feature = "nic", feature = "cli"))]

use std::process::{Command, Stdio};
use std::time::Duration;

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

    let child = Command::new("ip")
        .args(["netns", "exec", host.dp_ns().name()])
        .arg(env!("CARGO_BIN_EXE_pipewright"))
        .args([
            "nic",
            "run",
            "--seconds",
            "4",
            "--refresh-ms",
            "1000",
            "--config",
        ])
        .arg(&config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
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
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nic run failed:\n{stdout}\n{stderr}");
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
