//! Loom model: rule tables replaced while readers classify never show a half-updated
//! table, and a reader never goes back to an older version.
#![cfg(loom)]

use pipewright_nic::rules::Versioned;

/// A "table" whose two halves must always agree; a torn update would break that.
#[derive(Debug)]
struct Table {
    version_a: u64,
    version_b: u64,
}

#[test]
fn readers_see_whole_tables_in_order() {
    loom::model(|| {
        let shared = Versioned::new(Table {
            version_a: 0,
            version_b: 0,
        });
        let mut reader = shared.reader();
        let writer = {
            let shared = shared.clone();
            loom::thread::spawn(move || {
                for v in 1..=2 {
                    shared.publish(Table {
                        version_a: v,
                        version_b: v,
                    });
                }
            })
        };
        let mut last = 0;
        for _ in 0..3 {
            let table = reader.refresh();
            assert_eq!(table.version_a, table.version_b, "torn table");
            assert!(table.version_a >= last, "went back to an older table");
            last = table.version_a;
        }
        writer.join().unwrap();
        assert_eq!(
            reader.refresh().version_a,
            2,
            "the last update is seen once the writer is done"
        );
    });
}
