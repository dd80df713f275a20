//! One VM process (what `pipewright memshare vm` runs): `--spec JSON`.

fn main() {
    let mut args = std::env::args().skip(1);
    let spec = match (args.next().as_deref(), args.next()) {
        (Some("--spec"), Some(json)) => json,
        _ => {
            eprintln!("usage: pipewright-memshare-vm --spec JSON");
            std::process::exit(64);
        }
    };
    match serde_json::from_str(&spec) {
        Ok(spec) => std::process::exit(pipewright_memshare::vm_main(&spec)),
        Err(e) => {
            eprintln!("bad --spec: {e}");
            std::process::exit(64);
        }
    }
}
