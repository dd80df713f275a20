//! Window assignment is exact: every item in exactly its windows, late items exactly
//! those the watermark passed, nothing lost at the end of the stream.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::{Outbox, Stage};

/// Feeds items one by one, then flushes; returns the windows in emission order and
/// the indices of late items.
fn run<T, S>(stage: &mut S, items: Vec<T>) -> (Vec<Windowed<Vec<usize>>>, Vec<usize>)
where
    S: Stage<In = T, Out = Windowed<Vec<usize>>, Error = Late<T>>,
{
    let mut buf = VecDeque::new();
    let mut late = Vec::new();
    for item in items {
        if let Err(l) = stage.process(item, &mut Outbox::new(&mut buf)) {
            late.push(l);
        }
    }
    stage.flush(&mut Outbox::new(&mut buf)).unwrap();
    let late = late.into_iter().map(|l| l.timestamp as usize).collect();
    (buf.into_iter().collect(), late)
}

/// Brute force: the starts of the windows containing `t`.
fn windows_of(t: u64, size: u64, step: u64) -> Vec<u64> {
    (0..=t)
        .step_by(step as usize)
        .filter(|s| *s <= t && t < s + size)
        .collect()
}

fn windows() -> impl Strategy<Value = (u64, u64)> {
    (1u64..20).prop_flat_map(|size| (Just(size), 1..=size))
}

proptest! {
    /// Count windows: window [s, s+size) holds exactly the items with those indices.
    #[test]
    fn count_windows_are_exact((size, step) in windows(), n in 0usize..200) {
        let mut stage = count(Windows::sliding(size, step).unwrap())
            .aggregate(Vec::new, |v: &mut Vec<usize>, i: &usize| v.push(*i));
        let (out, late) = run(&mut stage, (0..n).collect());
        prop_assert!(late.is_empty());
        let mut expected: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for i in 0..n {
            for s in windows_of(i as u64, size, step) {
                expected.entry(s).or_default().push(i);
            }
        }
        let got: BTreeMap<u64, Vec<usize>> = out.iter().map(|w| (w.start, w.value.clone())).collect();
        prop_assert_eq!(got.len(), out.len(), "each window emitted once");
        prop_assert_eq!(&got, &expected);
        for w in &out {
            prop_assert_eq!(w.end, w.start + size);
            prop_assert_eq!(w.items as usize, w.value.len());
        }
        prop_assert!(out.windows(2).all(|p| p[0].end <= p[1].end), "emitted in order of ends");
    }

    /// Event time: each item is in exactly its windows still open when it arrived
    /// (end above the watermark: largest earlier timestamp minus the bound); it is late
    /// exactly when none is; windows are emitted once, in order, and only after the
    /// watermark reached their end or at the end of the stream.
    #[test]
    fn event_time_windows_are_exact(
        (size, step) in windows(),
        bound in 0u64..30,
        base in proptest::collection::vec((0u64..400, 0u64..40), 0..200),
    ) {
        // Roughly increasing timestamps with jitter: some within the bound, some late.
        let times: Vec<u64> = base.iter().enumerate()
            .map(|(i, (up, back))| (i as u64 * 2 + up / 40).saturating_sub(*back))
            .collect();
        let mut stage = event_time(Windows::sliding(size, step).unwrap(), bound, |x: &(usize, u64)| x.1)
            .aggregate(Vec::new, |v: &mut Vec<usize>, x: &(usize, u64)| v.push(x.0));
        let mut buf = VecDeque::new();
        let mut late = Vec::new();
        let mut emitted_at: Vec<(usize, Windowed<Vec<usize>>)> = Vec::new();
        for (i, &t) in times.iter().enumerate() {
            if stage.process((i, t), &mut Outbox::new(&mut buf)).is_err() {
                late.push(i);
            }
            emitted_at.extend(buf.drain(..).map(|w| (i, w)));
        }
        stage.flush(&mut Outbox::new(&mut buf)).unwrap();
        emitted_at.extend(buf.drain(..).map(|w| (times.len(), w)));

        // The model, from prefix maxima.
        let watermark_before = |i: usize| {
            times[..i].iter().max().map_or(0, |m| m.saturating_sub(bound))
        };
        let mut expected: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        let mut expected_late = Vec::new();
        for (i, &t) in times.iter().enumerate() {
            let wm = watermark_before(i);
            let open: Vec<u64> = windows_of(t, size, step).into_iter().filter(|s| s + size > wm).collect();
            if open.is_empty() {
                expected_late.push(i);
            }
            for s in open {
                expected.entry(s).or_default().push(i);
            }
        }
        prop_assert_eq!(&late, &expected_late);
        let got: BTreeMap<u64, Vec<usize>> = emitted_at.iter().map(|(_, w)| (w.start, w.value.clone())).collect();
        prop_assert_eq!(got.len(), emitted_at.len(), "each window emitted once");
        prop_assert_eq!(&got, &expected);
        let accepted: usize = expected.values().map(Vec::len).sum();
        prop_assert_eq!(emitted_at.iter().map(|(_, w)| w.items as usize).sum::<usize>(), accepted);
        for pair in emitted_at.windows(2) {
            prop_assert!(pair[0].1.end <= pair[1].1.end, "emitted in order of ends");
        }
        for (after, w) in &emitted_at {
            if *after < times.len() {
                // Emitted while processing item `after`: the watermark had reached its end.
                prop_assert!(watermark_before(after + 1) >= w.end);
            }
        }
    }
}

#[test]
fn processing_time_windows_keep_every_item() {
    let mut stage = processing_time(Windows::tumbling(1).unwrap(), Duration::from_micros(50))
        .aggregate(Vec::new, |v: &mut Vec<usize>, i: &usize| v.push(*i));
    let (out, late) = run(&mut stage, (0..10_000).collect());
    assert!(late.is_empty());
    let all: Vec<usize> = out.iter().flat_map(|w| w.value.clone()).collect();
    assert_eq!(
        all,
        (0..10_000).collect::<Vec<_>>(),
        "every item once, in order"
    );
    assert!(out.windows(2).all(|p| p[0].end <= p[1].start));
}

#[test]
fn bad_window_shapes_are_typed_errors() {
    assert_eq!(Windows::tumbling(0), Err(WindowError::ZeroSize));
    assert_eq!(
        Windows::sliding(4, 5),
        Err(WindowError::BadStep { size: 4, step: 5 })
    );
    assert_eq!(
        Windows::sliding(4, 0),
        Err(WindowError::BadStep { size: 4, step: 0 })
    );
    assert_eq!(
        Windows::sliding(u64::MAX, 1).unwrap().starts_of(3).count(),
        4
    );
}

#[test]
fn late_items_go_to_a_side_output_with_route_errors() {
    use crate::inline::InlineTransport;
    use crate::layer::RouteErrorsLayer;
    use crate::{Layer, PipelineBuilder};

    let b = PipelineBuilder::<InlineTransport>::new();
    let (input, events) = b.input::<u64>("events");
    let windows = event_time(Windows::tumbling(10).unwrap(), 5, |t: &u64| *t)
        .aggregate(|| 0u64, |n: &mut u64, _: &u64| *n += 1);
    let (closed, late) = events
        .then("tens", RouteErrorsLayer.layer(windows))
        .split_errors("late-split");
    let (closed, late) = (closed.output("closed"), late.output("late"));
    let mut run = b.build().unwrap().run_inline();
    // 3 and 18 are late: after 25 the watermark is 25 - 5 = 20, so [0, 10) and
    // [10, 20) have closed.
    run.send_all(&input, [1u64, 7, 12, 25, 3, 18, 31]);
    run.finish().unwrap();
    let closed: Vec<(u64, u64)> = run
        .take_output(&closed)
        .into_iter()
        .map(|w| (w.start, w.value))
        .collect();
    assert_eq!(closed, vec![(0, 2), (10, 1), (20, 1), (30, 1)]);
    let late: Vec<u64> = run.take_output(&late).into_iter().map(|l| l.item).collect();
    assert_eq!(late, vec![3, 18]);
}
