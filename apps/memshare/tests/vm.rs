//! The VMM on real KVM: the guest's checksums against the host's, writes, and guests
//! that misbehave.

mod common;

use std::time::Duration;

use pipewright_memshare::{
    marker, page_checksum, selected, write_threshold, GuestError, GuestMemory, Params, Program, Vm,
    VmConfig, PAGE,
};

const DEADLINE: Duration = Duration::from_secs(20);

fn config(program: Program, pages: u32, fraction: f64) -> VmConfig {
    VmConfig {
        program,
        params: Params {
            image_pages: pages,
            write_threshold: write_threshold(fraction),
            select_seed: 7,
            marker_seed: 0xabcd_0000,
        },
        ram_bytes: u64::from(pages) * PAGE as u64 + (1 << 20),
    }
}

#[test]
fn guest_checksums_equal_host_checksums_and_writes_are_the_selected_pages() {
    if !common::kvm_or_skip() {
        return;
    }
    let pages = 300u32;
    let image = common::pattern(pages as usize, 1);
    let cfg = config(Program::Checksummer, pages, 0.25);
    let mut vm = Vm::start(&cfg, GuestMemory::copied(&image).unwrap()).unwrap();
    let host: Vec<u32> = image.chunks(PAGE).map(page_checksum).collect();
    assert_eq!(vm.checksum(DEADLINE).unwrap(), host);

    let written = vm.write(DEADLINE).unwrap();
    let mut expect = image.clone();
    let mut n = 0;
    for i in 0..pages {
        if selected(i, 7, cfg.params.write_threshold) {
            n += 1;
            let o = i as usize * PAGE;
            expect[o..o + 4].copy_from_slice(&marker(i, 0xabcd_0000).to_le_bytes());
        }
    }
    assert_eq!(written, n);
    assert!(n > 0 && n < pages);
    let after = vm.checksum(DEADLINE).unwrap();
    let host_after: Vec<u32> = expect.chunks(PAGE).map(page_checksum).collect();
    assert_eq!(after, host_after);
    let mut back = vec![0u8; image.len()];
    vm.read_image(0, &mut back).unwrap();
    assert_eq!(back, expect);
}

#[test]
fn misbehaving_guests_get_typed_errors_and_the_host_goes_on() {
    if !common::kvm_or_skip() {
        return;
    }
    let image = common::pattern(4, 2);
    type Check = fn(&GuestError) -> bool;
    let cases: [(Program, Check); 4] = [
        (Program::TripleFault, |e| *e == GuestError::TripleFault),
        (Program::BadPort, |e| {
            matches!(
                e,
                GuestError::BadPort {
                    port: 0x1234,
                    write: true,
                    len: 4
                }
            )
        }),
        (Program::WildRead, |e| {
            matches!(e, GuestError::BadMemoryAccess { gpa: 0xf000_0000 })
        }),
        (Program::Spin, |e| {
            matches!(e, GuestError::Deadline { ms: 300 })
        }),
    ];
    for (program, check) in cases {
        let mut vm = Vm::start(
            &config(program, 4, 0.0),
            GuestMemory::copied(&image).unwrap(),
        )
        .unwrap();
        // Only the spinning guest needs the short deadline; the others fail by
        // themselves, however slow the machine, so they get the long one.
        let deadline = if program == Program::Spin {
            Duration::from_millis(300)
        } else {
            DEADLINE
        };
        let err = vm.checksum(deadline).unwrap_err();
        assert!(check(&err), "{program:?}: {err}");
        // The VM stays stopped with the same error.
        assert_eq!(vm.checksum(DEADLINE).unwrap_err(), err);
    }
    // A good guest right after: the host is unaffected.
    let mut vm = Vm::start(
        &config(Program::Checksummer, 4, 0.0),
        GuestMemory::copied(&image).unwrap(),
    )
    .unwrap();
    let host: Vec<u32> = image.chunks(PAGE).map(page_checksum).collect();
    assert_eq!(vm.checksum(DEADLINE).unwrap(), host);
}

#[test]
fn image_larger_than_guest_ram_is_refused() {
    if !common::kvm_or_skip() {
        return;
    }
    let image = common::pattern(8, 3);
    let mut cfg = config(Program::Checksummer, 8, 0.0);
    cfg.ram_bytes = 4 * PAGE as u64;
    let err = Vm::start(&cfg, GuestMemory::copied(&image).unwrap()).unwrap_err();
    assert!(matches!(err, GuestError::ImageTooLarge { .. }), "{err}");
}
