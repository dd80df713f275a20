//! `Readable`: readiness of a descriptor the stage does not own, and reads through its
//! `AsFd` duplicate.
#![cfg(not(loom))]

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use pipewright_runtime::readiness::Readable;

#[test]
fn readable_resolves_when_bytes_arrive_and_reads_through_its_duplicate() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut writer, reader) = UnixStream::pair().unwrap();
        reader.set_nonblocking(true).unwrap();
        let readable = Readable::new(reader.as_fd()).unwrap();
        writer.write_all(b"hello").unwrap();
        let guard = readable.ready().await.unwrap();
        let mut buf = [0u8; 16];
        let n = nix::unistd::read(readable.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        // Drained: the next read would block, so wait for the next event.
        assert_eq!(
            nix::unistd::read(readable.as_fd(), &mut buf),
            Err(nix::errno::Errno::EAGAIN)
        );
        guard.not_ready();
        writer.write_all(b"again").unwrap();
        let _guard = readable.ready().await.unwrap();
        let n = nix::unistd::read(readable.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"again");
        // The original stays usable and owned by its holder.
        drop(readable);
        writer.write_all(b"!").unwrap();
        let mut one = [0u8; 1];
        std::io::Read::read(&mut &reader, &mut one).unwrap();
        assert_eq!(&one, b"!");
    });
}
