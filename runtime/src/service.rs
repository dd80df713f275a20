//! A running pipeline as a `tower::Service`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pipewright_stages::{AnswerTagger, Reply, RequestError, Tagged};
use tower_service::Service;

use crate::handles::{Input, SendError, TrySendError};

/// Calls a running pipeline as a `tower::Service<Req, Response = Resp>`.
///
/// The pipeline's input carries [`Tagged<Req, Resp>`](Tagged) items, so every request
/// travels with its own completion and is answered exactly once, whatever order the
/// pipeline finishes requests in. Build it with [`Stream::then_tagged`] and end it with
/// [`Stream::respond`].
///
/// `poll_ready` is always ready while the pipeline is open; a call that finds the input
/// full waits inside its response future (backpressure without a hidden reservation).
/// Each call allocates its reply slot (a oneshot channel) and nothing else; a call that
/// finds the input full also boxes its wait for room.
///
/// [`Stream::then_tagged`]: pipewright_stages::Stream::then_tagged
/// [`Stream::respond`]: pipewright_stages::Stream::respond
///
/// ```
/// use pipewright::{stage, PipelineBuilder, PipelineService, Plan, Runtime, Tagged};
/// use tower::{Service, ServiceExt};
///
/// let b = PipelineBuilder::new();
/// let (input, requests) = b.input::<Tagged<u64, u64>>("requests");
/// requests
///     .then_tagged("square", stage::map(|x: u64| x * x))
///     .then_tagged("plus-one", stage::map(|x: u64| x + 1))
///     .respond("reply");
/// let running = Runtime::start(b.build()?, Plan::fused())?;
/// let mut service = PipelineService::new(running.input(&input).unwrap());
/// let rt = tokio::runtime::Builder::new_current_thread().build()?;
/// let answer = rt.block_on(async { service.ready().await?.call(7).await })?;
/// assert_eq!(answer, 50);
/// drop(service);
/// running.drain()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct PipelineService<Req, Resp> {
    input: Input<Tagged<Req, Resp>>,
}

impl<Req: Send + 'static, Resp: Send + 'static> PipelineService<Req, Resp> {
    /// Serves requests through the pipeline behind `input`.
    pub fn new(input: Input<Tagged<Req, Resp>>) -> Self {
        Self { input }
    }
}

/// Why [`PipelineService::try_call`] did not take a request; the request is handed back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TryCallError<Req> {
    /// The pipeline's input is full: answer "busy" (shed load) or retry later.
    #[error("the pipeline is busy: its input is full")]
    Busy(Req),
    /// The pipeline's input is closed (drained or shut down).
    #[error("the pipeline is closed")]
    Closed(Req),
}

impl<Req: Send + 'static, Resp: Send + 'static> PipelineService<Req, Resp> {
    /// Admission control: sends `request` only if the pipeline's input has room now,
    /// and returns its response future; a full input gives the request back as
    /// [`TryCallError::Busy`] at once instead of waiting (what a server answering
    /// "busy" to shed load needs; [`call`](Service::call) waits instead).
    ///
    /// ```
    /// use pipewright::{stage, PipelineBuilder, PipelineService, Plan, Runtime, Tagged, TryCallError};
    ///
    /// let b = PipelineBuilder::new();
    /// let (input, requests) = b.input::<Tagged<u64, u64>>("requests");
    /// requests.then_tagged("double", stage::map(|x: u64| 2 * x)).respond("reply");
    /// let running = Runtime::start(b.build()?, Plan::fused())?;
    /// let mut service = PipelineService::new(running.input(&input).unwrap());
    /// let rt = tokio::runtime::Builder::new_current_thread().build()?;
    /// match service.try_call(21) {
    ///     Ok(answer) => assert_eq!(rt.block_on(answer)?, 42),
    ///     Err(TryCallError::Busy(_)) => println!("busy, try again"),
    ///     Err(TryCallError::Closed(_)) => unreachable!("the pipeline runs"),
    /// }
    /// drop(service);
    /// running.drain()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_call(&mut self, request: Req) -> Result<ResponseFuture<Resp>, TryCallError<Req>> {
        let (tagged, reply) = Tagged::new(request);
        match self.input.try_send(tagged) {
            Ok(()) => Ok(ResponseFuture::waiting(reply)),
            Err(TrySendError::Full(tagged)) => Err(TryCallError::Busy(untag(tagged))),
            Err(TrySendError::Closed(tagged)) => Err(TryCallError::Closed(untag(tagged))),
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> PipelineService<Req, Resp> {
    /// Sends `request` with its answer going to `answers` as `(id, result)`, instead of
    /// to a future of its own: for a caller with many requests in flight, which then
    /// waits on one queue and is woken once per burst of answers (see [`Answers`](pipewright_stages::Answers)).
    /// Waits while the pipeline's input is full; a closed pipeline is
    /// [`RequestError::Closed`] (and nothing is queued for `id`). `answers` is the
    /// queue itself or one of its [`AnswerTagger`]s (from another task).
    ///
    /// ```
    /// use pipewright::{stage, Answers, PipelineBuilder, PipelineService, Plan, Runtime, Tagged};
    ///
    /// let b = PipelineBuilder::new();
    /// let (input, requests) = b.input::<Tagged<u64, u64>>("requests");
    /// requests.then_tagged("double", stage::map(|x: u64| 2 * x)).respond("reply");
    /// let running = Runtime::start(b.build()?, Plan::fused())?;
    /// let mut service = PipelineService::new(running.input(&input).unwrap());
    /// let rt = tokio::runtime::Builder::new_current_thread().build()?;
    /// let mut answers = Answers::new();
    /// let mut got = rt.block_on(async {
    ///     for id in 0..100 {
    ///         service.send_queued(&answers, id, id).await?;
    ///     }
    ///     let mut got = Vec::new();
    ///     while got.len() < 100 {
    ///         answers.recv_many(&mut got, 100).await;
    ///     }
    ///     Ok::<_, pipewright::RequestError>(got)
    /// })?;
    /// got.sort_by_key(|(id, _)| *id);
    /// assert!(got.iter().all(|(id, answer)| *answer == Ok(2 * id)));
    /// drop(service);
    /// running.drain()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn send_queued(
        &mut self,
        answers: &impl AsRef<AnswerTagger<Resp>>,
        id: u64,
        request: Req,
    ) -> Result<(), RequestError> {
        let tagged = answers.as_ref().tag(id, request);
        match self.input.try_send(tagged) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(tagged)) => {
                forget_unanswered(tagged);
                Err(RequestError::Closed)
            }
            Err(TrySendError::Full(tagged)) => {
                self.input
                    .send_async(tagged)
                    .await
                    .map_err(|SendError::Closed(tagged)| {
                        forget_unanswered(tagged);
                        RequestError::Closed
                    })
            }
        }
    }
}

/// A queued request that never entered the pipeline: its caller learns that from the
/// error, so its ticket must not also answer `Dropped` into the queue.
fn forget_unanswered<Req, Resp>(tagged: Tagged<Req, Resp>) {
    let (ticket, _request) = tagged.into_parts();
    ticket.forget();
}

/// The request of a tagged item that never entered the pipeline.
fn untag<Req, Resp>(tagged: Tagged<Req, Resp>) -> Req {
    match tagged.into_parts().1 {
        Ok(request) => request,
        Err(_) => unreachable!("a request made by Tagged::new carries its value"),
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> PipelineService<Req, Resp> {
    /// A clone, or `None` once the pipeline's input is closed (after `drain` or
    /// `close_inputs`): what a server that clones its service per connection calls
    /// while it may be shutting down.
    pub fn try_clone(&self) -> Option<Self> {
        self.input.try_clone().map(|input| Self { input })
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Clone for PipelineService<Req, Resp> {
    /// # Panics
    ///
    /// If the pipeline's input is already closed (after `drain`); use
    /// [`PipelineService::try_clone`] where that can happen.
    fn clone(&self) -> Self {
        self.try_clone()
            .expect("cloning a PipelineService whose pipeline input is closed; use try_clone")
    }
}

/// The response future of [`PipelineService`]: resolves to the pipeline's answer.
///
/// A named future, not a boxed one: a call whose request went straight into the
/// pipeline's input allocates nothing beyond its reply slot. A service wrapping a
/// `PipelineService` can answer some calls itself with [`ResponseFuture::ready`].
///
/// ```
/// use pipewright::{RequestError, ResponseFuture};
///
/// let answered: ResponseFuture<u32> = ResponseFuture::ready(Ok(7));
/// assert_eq!(futures::executor::block_on(answered), Ok(7));
/// let refused: ResponseFuture<u32> = ResponseFuture::ready(Err(RequestError::Closed));
/// assert_eq!(futures::executor::block_on(refused), Err(RequestError::Closed));
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<Resp> {
    state: Response<Resp>,
}

enum Response<Resp> {
    /// The request is in the pipeline; its answer comes through the reply slot.
    Waiting(Reply<Resp>),
    /// Answered already (or refused); taken by the first poll.
    Ready(Option<Result<Resp, RequestError>>),
    /// The input was full: the request still has to be sent, then answered.
    Sending(Pin<Box<dyn Future<Output = Result<Resp, RequestError>> + Send>>),
}

impl<Resp> ResponseFuture<Resp> {
    /// A future that resolves at once to `result`.
    pub fn ready(result: Result<Resp, RequestError>) -> Self {
        Self {
            state: Response::Ready(Some(result)),
        }
    }

    fn waiting(reply: Reply<Resp>) -> Self {
        Self {
            state: Response::Waiting(reply),
        }
    }

    fn sending(send: impl Future<Output = Result<Resp, RequestError>> + Send + 'static) -> Self {
        Self {
            state: Response::Sending(Box::pin(send)),
        }
    }
}

// The answer is only stored and moved out, never polled in place: pinning the future
// never needs to pin it.
impl<Resp> Unpin for ResponseFuture<Resp> {}

impl<Resp> Future for ResponseFuture<Resp> {
    type Output = Result<Resp, RequestError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            Response::Waiting(reply) => Pin::new(reply)
                .poll(cx)
                .map(|answer| answer.unwrap_or(Err(RequestError::Dropped))),
            Response::Ready(result) => Poll::Ready(
                result
                    .take()
                    .expect("ResponseFuture polled after it completed"),
            ),
            Response::Sending(send) => send.as_mut().poll(cx),
        }
    }
}

impl<Resp> std::fmt::Debug for ResponseFuture<Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            Response::Waiting(_) => "waiting for the answer",
            Response::Ready(_) => "ready",
            Response::Sending(_) => "waiting for room in the input",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Service<Req> for PipelineService<Req, Resp> {
    type Response = Resp;
    type Error = RequestError;
    type Future = ResponseFuture<Resp>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), RequestError>> {
        if self.input.is_closed() {
            Poll::Ready(Err(RequestError::Closed))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let (tagged, reply) = Tagged::new(request);
        match self.input.try_send(tagged) {
            Ok(()) => ResponseFuture::waiting(reply),
            Err(TrySendError::Closed(_)) => ResponseFuture::ready(Err(RequestError::Closed)),
            Err(TrySendError::Full(tagged)) => {
                let mut input = self.input.try_clone();
                ResponseFuture::sending(async move {
                    let Some(input) = input.as_mut() else {
                        return Err(RequestError::Closed);
                    };
                    if input.send_async(tagged).await.is_err() {
                        return Err(RequestError::Closed);
                    }
                    reply.await.unwrap_or(Err(RequestError::Dropped))
                })
            }
        }
    }
}
