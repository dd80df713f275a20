//! Replicated stages: one stage declared as several instances that a plan spreads over
//! workers (see [`Replicas`](crate::Replicas)).

use super::Stream;
use crate::exec::{Endpoint, Transport};
use crate::node::{Bare, Numbering, ReorderNode, ReplicaSplitNode};
use crate::{AsyncStage, BuildError, Stage};

impl<'b, T: Send + 'static, X: Transport> Stream<'b, T, X> {
    /// Feeds the stream into a stage that runs as up to `replicas.max` instances, each
    /// made by `make(index)` and named `name#index`, so that a plan can give the stage
    /// several workers (see [`Replicas`](crate::Replicas)). A plan refers to the whole
    /// set as `name`, or to one replica as `name#index`.
    pub fn then_replicated<S: Stage<In = T>>(
        self,
        name: &str,
        replicas: crate::Replicas<T>,
        mut make: impl FnMut(usize) -> S,
    ) -> Stream<'b, S::Out, X> {
        let b = self.builder;
        b.graph.borrow_mut().claim_name(name);
        let max = replicas.max;
        let control = crate::ReplicaControl::new(name, max, replicas.key.is_some());
        let split = format!("{name}/split");
        if replicas.ordered {
            let (_, input) = self.feed();
            let id = b.add_node(
                &split,
                Box::new(ReplicaSplitNode::<T, Numbering, X>::new(
                    split.clone(),
                    control,
                    replicas.key,
                    true,
                )),
                input,
                max,
            );
            let settled: Vec<Stream<'b, crate::replica::Settled<S::Out>, X>> = (0..max)
                .map(|i| {
                    Stream::<crate::replica::Numbered<T>, X>::new(
                        b,
                        vec![Endpoint::Node { node: id, port: i }],
                    )
                    .then(
                        &crate::replica_name(name, i),
                        crate::replica::Sequenced::new(make(i)),
                    )
                })
                .collect();
            let order = format!("{name}/order");
            let (_, input) = b.merge(settled).feed();
            let id = b.add_node(
                &order,
                Box::new(ReorderNode::<S::Out, X>::new(order.clone())),
                input,
                1,
            );
            Stream::new(b, vec![Endpoint::Node { node: id, port: 0 }])
        } else {
            let outs: Vec<Stream<'b, S::Out, X>> = self
                .unordered_split(name, control, replicas.key, max)
                .into_iter()
                .enumerate()
                .map(|(i, input)| input.then(&crate::replica_name(name, i), make(i)))
                .collect();
            b.merge(outs)
        }
    }

    /// Feeds the stream into an async stage that runs as up to `replicas.max` instances
    /// (tasks, each on the worker the plan gives `name#index`), made by `make(index)`:
    /// I/O-bound work spread over workers. Replicas of an async stage deliver in
    /// completion order, so `replicas` must be [`Replicas::unordered`](crate::Replicas::unordered),
    /// optionally [`by_key`](crate::Replicas::by_key) (otherwise building fails with
    /// [`BuildError::OrderedAsyncReplicas`]).
    ///
    /// ```
    /// use pipewright::{AsyncStage, Burst, Failures, Outbox, PipelineBuilder, Plan, Replicas, Runtime};
    ///
    /// struct Lookup; // stands for a stage that awaits a socket or a file
    /// impl AsyncStage for Lookup {
    ///     type In = u64;
    ///     type Out = u64;
    ///     type Error = std::convert::Infallible;
    ///     async fn process_burst(
    ///         &mut self,
    ///         burst: &mut Burst<'_, u64>,
    ///         out: &mut Outbox<'_, u64>,
    ///         _failures: &mut Failures<'_, Self::Error>,
    ///     ) {
    ///         tokio::task::yield_now().await;
    ///         out.extend(burst.drain().map(|k| k * 10));
    ///     }
    /// }
    ///
    /// let b = PipelineBuilder::new();
    /// let (input, keys) = b.input::<u64>("keys");
    /// let values = keys
    ///     .then_async_replicated("lookup", Replicas::new(2).unordered(), |_| Lookup)
    ///     .output("values");
    /// let mut running = Runtime::start(b.build()?, Plan::spread(2))?;
    /// let (mut tx, rx) = (running.input(&input).unwrap(), running.output(&values).unwrap());
    /// for key in 0..100 {
    ///     tx.send(key)?;
    /// }
    /// drop(tx);
    /// running.drain()?;
    /// let mut got = rx.collect();
    /// got.sort();
    /// assert_eq!(got, (0..100).map(|k| k * 10).collect::<Vec<_>>());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn then_async_replicated<S: AsyncStage<In = T>>(
        self,
        name: &str,
        replicas: crate::Replicas<T>,
        mut make: impl FnMut(usize) -> S,
    ) -> Stream<'b, S::Out, X> {
        let b = self.builder;
        {
            let mut g = b.graph.borrow_mut();
            g.claim_name(name);
            if replicas.ordered && g.error.is_none() {
                g.error = Some(BuildError::OrderedAsyncReplicas(name.to_string()));
            }
        }
        let max = replicas.max;
        let control = crate::ReplicaControl::new(name, max, replicas.key.is_some());
        let outs: Vec<Stream<'b, S::Out, X>> = self
            .unordered_split(name, control, replicas.key, max)
            .into_iter()
            .enumerate()
            .map(|(i, input)| input.then_async(&crate::replica_name(name, i), make(i)))
            .collect();
        b.merge(outs)
    }

    /// Ends the stream in an async sink that runs as up to `replicas.max` instances
    /// (see [`then_async_replicated`](Stream::then_async_replicated); `replicas` must be
    /// unordered).
    pub fn sink_async_replicated<S: AsyncStage<In = T>>(
        self,
        name: &str,
        replicas: crate::Replicas<T>,
        make: impl FnMut(usize) -> S,
    ) {
        self.then_async_replicated(name, replicas, make).discard();
    }

    /// The split of an unordered replicated stage (`name/split`, round robin to the
    /// replica with the least waiting, or by key) and the input stream of each replica.
    fn unordered_split(
        self,
        name: &str,
        control: crate::ReplicaControl,
        key: Option<crate::replica::KeyFn<T>>,
        max: usize,
    ) -> Vec<Stream<'b, T, X>> {
        let b = self.builder;
        let split = format!("{name}/split");
        let (_, input) = self.feed();
        let id = b.add_node(
            &split,
            Box::new(ReplicaSplitNode::<T, Bare, X>::new(
                split.clone(),
                control,
                key,
                false,
            )),
            input,
            max,
        );
        (0..max)
            .map(|port| Stream::new(b, vec![Endpoint::Node { node: id, port }]))
            .collect()
    }
}
