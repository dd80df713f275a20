//! Requests that carry their own completion through a pipeline, so that a whole
//! pipeline can be served as a `tower::Service` with one answer per request.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;

use tokio::sync::{mpsc, oneshot};

use crate::{Outbox, RequestError, Stage};

/// The completion of one request: answering it consumes it; dropping it unanswered
/// tells the caller: an answer queue receives [`RequestError::Dropped`], a [`Reply`]
/// receiver a `RecvError` (which `PipelineService` gives its caller as
/// `RequestError::Dropped`). The answer goes to the request's own
/// [`Reply`] (from [`Tagged::new`]) or, for a request tagged by [`Answers::tag`], into
/// its caller's shared answer queue.
pub struct Ticket<R> {
    to: Option<AnswerTo<R>>,
}

enum AnswerTo<R> {
    Reply(oneshot::Sender<Result<R, RequestError>>),
    Queue {
        id: u64,
        queue: mpsc::UnboundedSender<(u64, Result<R, RequestError>)>,
    },
}

impl<R> fmt::Debug for Ticket<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ticket")
    }
}

impl<R> Ticket<R> {
    /// Answers the request. Returns false when the caller has gone away.
    pub fn answer(mut self, result: Result<R, RequestError>) -> bool {
        match self.to.take() {
            Some(AnswerTo::Reply(reply)) => reply.send(result).is_ok(),
            Some(AnswerTo::Queue { id, queue }) => queue.send((id, result)).is_ok(),
            None => false,
        }
    }
}

impl<R> Ticket<R> {
    /// Drops the ticket without answering: for a request that never entered a
    /// pipeline, whose caller was already told so.
    pub fn forget(mut self) {
        self.to = None;
    }
}

impl<R> Drop for Ticket<R> {
    fn drop(&mut self) {
        // A dropped oneshot sender already tells its receiver; a queue must be told.
        if let Some(AnswerTo::Queue { id, queue }) = self.to.take() {
            let _gone = queue.send((id, Err(RequestError::Dropped)));
        }
    }
}

/// One answer from an [`Answers`] queue: the id the request was tagged with, and its
/// result.
pub type Answer<R> = (u64, Result<R, RequestError>);

/// A caller's answer queue: requests tagged with [`Answers::tag`] are answered into it,
/// each with the id the caller chose. A caller with many requests in flight (a
/// connection handler, a load generator) waits on one queue instead of one future per
/// request: a burst of answers wakes it once (the queue wakes its receiver on the first
/// answer after it last looked, not on every answer), and it drains the whole burst
/// with [`recv_many`](Answers::recv_many).
///
/// ```
/// use pipewright_stages::{Answers, RequestError};
///
/// let mut answers = Answers::<u64>::new();
/// let one = answers.tag(1, "one");
/// let two = answers.tag(2, "two");
/// // A pipeline answers (here by hand) in any order; a dropped ticket says so.
/// let (ticket, _value) = two.into_parts();
/// ticket.answer(Ok(22));
/// drop(one);
/// assert_eq!(answers.try_recv(), Some((2, Ok(22))));
/// assert_eq!(answers.try_recv(), Some((1, Err(RequestError::Dropped))));
/// assert_eq!(answers.try_recv(), None);
/// ```
///
/// The queue's receiving end and its tagging end can live in different tasks: a
/// connection's reader tags requests with a [`tagger`](Answers::tagger) while its
/// writer owns the `Answers` and sends the answers back.
pub struct Answers<R> {
    tagger: AnswerTagger<R>,
    rx: mpsc::UnboundedReceiver<Answer<R>>,
}

/// The tagging end of an [`Answers`] queue: cheap to clone and `Send`, so requests can
/// be tagged in another task than the one that receives their answers.
///
/// ```
/// use pipewright_stages::Answers;
///
/// let mut answers = Answers::<u64>::new();
/// let tagger = answers.tagger();
/// let reader = std::thread::spawn(move || {
///     // A connection's reader: tags what it parsed and hands it to a pipeline
///     // (here answered on the spot).
///     for id in 0..3 {
///         let (ticket, value) = tagger.tag(id, id * 10).into_parts();
///         ticket.answer(value.map(|v| v + 1));
///     }
/// });
/// reader.join().unwrap();
/// let mut got: Vec<_> = std::iter::from_fn(|| answers.try_recv()).collect();
/// got.sort_by_key(|(id, _)| *id);
/// assert_eq!(got, vec![(0, Ok(1)), (1, Ok(11)), (2, Ok(21))]);
/// ```
pub struct AnswerTagger<R> {
    tx: mpsc::UnboundedSender<Answer<R>>,
}

impl<R> Clone for AnswerTagger<R> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<R> fmt::Debug for AnswerTagger<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AnswerTagger")
    }
}

impl<R> AnswerTagger<R> {
    /// A request carrying `value` whose answer arrives on the tagger's queue as
    /// `(id, result)`. Ids are the caller's: the queue does not check them.
    pub fn tag<T>(&self, id: u64, value: T) -> Tagged<T, R> {
        Tagged {
            ticket: Ticket {
                to: Some(AnswerTo::Queue {
                    id,
                    queue: self.tx.clone(),
                }),
            },
            value: Ok(value),
        }
    }
}

impl<R> AsRef<AnswerTagger<R>> for AnswerTagger<R> {
    fn as_ref(&self) -> &AnswerTagger<R> {
        self
    }
}

impl<R> AsRef<AnswerTagger<R>> for Answers<R> {
    fn as_ref(&self) -> &AnswerTagger<R> {
        &self.tagger
    }
}

impl<R> fmt::Debug for Answers<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Answers")
            .field("queued", &self.rx.len())
            .finish()
    }
}

impl<R> Default for Answers<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R> Answers<R> {
    /// An empty queue.
    pub fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tagger: AnswerTagger { tx },
            rx,
        }
    }

    /// A request carrying `value` whose answer arrives on this queue as `(id, result)`.
    /// Ids are the caller's: the queue does not check them.
    pub fn tag<T>(&self, id: u64, value: T) -> Tagged<T, R> {
        self.tagger.tag(id, value)
    }

    /// A tagging end of this queue, for another task (see [`AnswerTagger`]).
    pub fn tagger(&self) -> AnswerTagger<R> {
        self.tagger.clone()
    }

    /// Waits for the next answer. The queue never closes (it holds a sender itself):
    /// await it only while requests are outstanding.
    pub async fn recv(&mut self) -> Answer<R> {
        self.rx
            .recv()
            .await
            .expect("the queue holds its own sender")
    }

    /// Waits for at least one answer, then moves up to `limit` of those waiting into
    /// `buf`; returns how many.
    pub async fn recv_many(&mut self, buf: &mut Vec<Answer<R>>, limit: usize) -> usize {
        self.rx.recv_many(buf, limit.max(1)).await
    }

    /// The next answer if one is waiting.
    pub fn try_recv(&mut self) -> Option<Answer<R>> {
        self.rx.try_recv().ok()
    }
}

/// An item of type `T` travelling through a pipeline on behalf of a request whose
/// response type is `R`, or the error that already ended it.
pub struct Tagged<T, R> {
    ticket: Ticket<R>,
    value: Result<T, RequestError>,
}

impl<T: fmt::Debug, R> fmt::Debug for Tagged<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tagged")
            .field("value", &self.value)
            .finish()
    }
}

/// Where the caller of a tagged request waits for its answer.
pub type Reply<R> = oneshot::Receiver<Result<R, RequestError>>;

impl<T, R> Tagged<T, R> {
    /// A new request and the receiver its answer will arrive on.
    pub fn new(value: T) -> (Self, Reply<R>) {
        let (reply, rx) = oneshot::channel();
        (
            Self {
                ticket: Ticket {
                    to: Some(AnswerTo::Reply(reply)),
                },
                value: Ok(value),
            },
            rx,
        )
    }

    /// The value, or the error that ended the request.
    pub fn value(&self) -> Result<&T, &RequestError> {
        self.value.as_ref()
    }

    /// Splits into the ticket and the value.
    pub fn into_parts(self) -> (Ticket<R>, Result<T, RequestError>) {
        (self.ticket, self.value)
    }

    /// Puts a ticket and a value (or the error that ended the request) back together.
    pub fn from_parts(ticket: Ticket<R>, value: Result<T, RequestError>) -> Self {
        Self { ticket, value }
    }
}

impl<R> Tagged<R, R> {
    /// Answers the request with its value (or its error).
    pub fn respond(self) -> bool {
        self.ticket.answer(self.value)
    }
}

/// Runs a one-in-one-out [`Stage`] on tagged requests: the ticket follows the item; an
/// error, no output or several outputs answer the request with a [`RequestError`].
pub struct TaggedStage<S: Stage, R> {
    name: String,
    inner: S,
    scratch: VecDeque<S::Out>,
    _r: std::marker::PhantomData<fn() -> R>,
}

impl<S: Stage, R> fmt::Debug for TaggedStage<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaggedStage")
            .field("name", &self.name)
            .finish()
    }
}

impl<S: Stage, R> TaggedStage<S, R> {
    /// Wraps `inner`; `name` appears in the request errors it produces.
    pub fn new(name: &str, inner: S) -> Self {
        Self {
            name: name.to_string(),
            inner,
            scratch: VecDeque::new(),
            _r: std::marker::PhantomData,
        }
    }
}

impl<S: Stage, R: Send + 'static> Stage for TaggedStage<S, R> {
    type In = Tagged<S::In, R>;
    type Out = Tagged<S::Out, R>;
    type Error = Infallible;

    #[inline]
    fn process(
        &mut self,
        item: Self::In,
        out: &mut Outbox<'_, Self::Out>,
    ) -> Result<(), Infallible> {
        let Tagged { ticket, value } = item;
        let value = match value {
            Err(e) => Err(e),
            Ok(v) => {
                self.scratch.clear();
                match self.inner.process(v, &mut Outbox::new(&mut self.scratch)) {
                    Err(e) => Err(RequestError::Stage {
                        stage: self.name.clone(),
                        message: e.to_string(),
                        error: None,
                    }),
                    Ok(()) => match self.scratch.len() {
                        1 => Ok(self.scratch.pop_front().expect("length checked")),
                        0 => Err(RequestError::NoOutput {
                            stage: self.name.clone(),
                        }),
                        n => {
                            self.scratch.clear();
                            Err(RequestError::Ambiguous {
                                stage: self.name.clone(),
                                outputs: n,
                            })
                        }
                    },
                }
            }
        };
        out.push(Tagged { ticket, value });
        Ok(())
    }
}

/// The sink that answers tagged requests.
#[derive(Debug)]
pub(crate) struct Respond<R>(pub(crate) std::marker::PhantomData<fn(R)>);

impl<R: Send + 'static> Stage for Respond<R> {
    type In = Tagged<R, R>;
    type Out = ();
    type Error = Infallible;

    #[inline]
    fn process(&mut self, item: Self::In, _out: &mut Outbox<'_, ()>) -> Result<(), Infallible> {
        // A caller that stopped waiting is not an error of the pipeline.
        let _answered = item.respond();
        Ok(())
    }
}

impl<'b, T: Send + 'static, R: Send + 'static, X: crate::exec::Transport>
    crate::Stream<'b, Tagged<T, R>, X>
{
    /// Feeds tagged requests through a one-in-one-out stage; see [`TaggedStage`].
    pub fn then_tagged<S: Stage<In = T>>(
        self,
        name: &str,
        stage: S,
    ) -> crate::Stream<'b, Tagged<S::Out, R>, X> {
        self.then(name, TaggedStage::new(name, stage))
    }

    /// Runs a `tower::Service` on tagged requests, many calls in flight at once (up to
    /// the service's readiness and `window`): the ticket follows each call, and a
    /// failed call answers its request with [`RequestError::Stage`] carrying the
    /// service's typed error (`error.downcast_ref::<S::Error>()`).
    pub fn then_tagged_async<S>(
        self,
        name: &str,
        service: S,
        window: usize,
    ) -> crate::Stream<'b, Tagged<S::Response, R>, X>
    where
        S: tower_service::Service<T> + Send + 'static,
        S::Future: Send,
        S::Response: Send + 'static,
        S::Error: std::error::Error + Send + Sync + 'static,
    {
        self.then_async(
            name,
            crate::tagged_service::TaggedService::new(name, service, window),
        )
    }
}

impl<R: Send + 'static, X: crate::exec::Transport> crate::Stream<'_, Tagged<R, R>, X> {
    /// Ends the stream by answering every request.
    pub fn respond(self, name: &str) {
        self.sink(name, Respond(std::marker::PhantomData));
    }
}
