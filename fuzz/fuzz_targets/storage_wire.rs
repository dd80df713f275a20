//! Bytes a storage node reads from a connection (the signed hello, protocol messages
//! from peers, client requests) and from its log (frames of records): every decoder
//! refuses garbage with an error, never a panic, and what decodes re-encodes to a
//! value that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipewright_storage::auth::SignedHello;
use pipewright_storage::log::decode_frame;
use pipewright_storage::protocol::Message;
use pipewright_storage::wire::{decode, encode, ClientRequest, ClientResponse};

fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = decode::<T>(data) {
        let again: T = decode(&encode(&value)).expect("what decoded re-encodes");
        assert_eq!(again, value);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<SignedHello>(data);
    round_trip::<Message>(data);
    round_trip::<ClientRequest>(data);
    round_trip::<ClientResponse>(data);
    if let Ok((_, used)) = decode_frame(data) {
        assert!(used <= data.len());
    }
});
