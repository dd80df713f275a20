//! The synchronous [`Stage`] trait and small closure-built stages.

use std::convert::Infallible;
use std::fmt;
use std::time::Duration;

use crate::{Burst, ErrorPolicy, Failures, Outbox};

/// Windowed aggregation stages (tumbling and sliding; by count, event time or
/// processing time).
pub use crate::window;

/// A typed, synchronous pipeline step: `In -> Out`, zero or more outputs per input.
///
/// The executor hands a stage a [`Burst`] of up to its burst budget of items per
/// activation. The default [`process_burst`](Stage::process_burst) calls
/// [`process`](Stage::process) once per item: a direct, inlinable call with no boxing,
/// no allocation and no future per item. Override `process_burst` when a whole burst can
/// be handled better at once (vectorised checksums, one syscall per burst).
///
/// A per-item `Err` is handed to the stage's [`ErrorPolicy`]; a panic is caught by the
/// executor, counted, and handled by the same policy (under `--cfg loom` a panic is
/// not caught, so that loom reports it).
///
/// ```
/// use pipewright::{Outbox, Stage};
///
/// /// Splits lines into words.
/// struct Words;
///
/// impl Stage for Words {
///     type In = String;
///     type Out = String;
///     type Error = std::convert::Infallible;
///
///     fn process(&mut self, line: String, out: &mut Outbox<'_, String>) -> Result<(), Self::Error> {
///         out.extend(line.split_whitespace().map(str::to_owned));
///         Ok(())
///     }
/// }
///
/// let mut buf = std::collections::VecDeque::new();
/// Words.process("a b c".into(), &mut Outbox::new(&mut buf)).unwrap();
/// assert_eq!(buf.len(), 3);
/// ```
pub trait Stage: Send + 'static {
    /// What the stage consumes.
    type In: Send + 'static;
    /// What the stage emits.
    type Out: Send + 'static;
    /// Why one item failed. Use [`Infallible`] for stages that cannot fail.
    type Error: fmt::Debug + fmt::Display + Send + 'static;

    /// Processes one item.
    fn process(
        &mut self,
        item: Self::In,
        out: &mut Outbox<'_, Self::Out>,
    ) -> Result<(), Self::Error>;

    /// Processes a burst. Items left in `burst` are offered again on the next activation.
    ///
    /// By default: [`process`](Stage::process) for each item in turn, every `Err`
    /// pushed to `failures`.
    #[inline(always)]
    fn process_burst(
        &mut self,
        burst: &mut Burst<'_, Self::In>,
        out: &mut Outbox<'_, Self::Out>,
        failures: &mut Failures<'_, Self::Error>,
    ) {
        while let Some(item) = burst.pop() {
            if let Err(error) = self.process(item, out) {
                failures.push(error);
            }
        }
    }

    /// Called once when the input has ended, before the stage's output is closed:
    /// a batching stage emits what it holds.
    ///
    /// By default: nothing to emit, `Ok(())`.
    fn flush(&mut self, _out: &mut Outbox<'_, Self::Out>) -> Result<(), Self::Error> {
        Ok(())
    }

    /// How the executor treats failed items and panics of this stage.
    ///
    /// By default [`ErrorPolicy::DropAndCount`]: a failed item is dropped and counted,
    /// the stage carries on. Override it, or wrap the stage in
    /// [`ErrorPolicyLayer`](crate::layer::ErrorPolicyLayer), for
    /// [`ErrorPolicy::FailPipeline`].
    fn error_policy(&self) -> ErrorPolicy {
        ErrorPolicy::DropAndCount
    }

    /// When the last activation left items in its burst: how long until the stage can
    /// take more (a rate limiter's refill time). `None` means "as soon as there is work".
    ///
    /// By default `None`.
    fn backoff(&self) -> Option<Duration> {
        None
    }

    /// Called when the stage's input is empty but has not ended: a stage with timers
    /// (a processing-time window) emits what is due and returns how long until it next
    /// needs to be called, even if no item arrives; its worker then parks at most that
    /// long. `None` (the default): call it only when items arrive.
    fn on_idle(&mut self, _out: &mut Outbox<'_, Self::Out>) -> Option<Duration> {
        None
    }
}

/// A stage from a closure `In -> Out`.
///
/// ```
/// use pipewright::{stage, Outbox, Stage};
/// let mut double = stage::map(|x: u32| x * 2);
/// let mut buf = std::collections::VecDeque::new();
/// double.process(21, &mut Outbox::new(&mut buf)).unwrap();
/// assert_eq!(buf[0], 42);
/// ```
pub fn map<In, Out, F>(f: F) -> Map<F, In>
where
    F: FnMut(In) -> Out + Send + 'static,
{
    Map {
        f,
        _in: std::marker::PhantomData,
    }
}

/// A stage from a fallible closure `In -> Result<Out, E>`; errors go to the error policy.
pub fn try_map<In, Out, E, F>(f: F) -> TryMap<F, In>
where
    F: FnMut(In) -> Result<Out, E> + Send + 'static,
{
    TryMap {
        f,
        _in: std::marker::PhantomData,
    }
}

/// A stage from a closure `In -> impl IntoIterator<Item = Out>`: zero or more
/// outputs per input (a block of lines into its records, a batch into its items).
///
/// ```
/// use pipewright::{stage, Outbox, Stage};
/// let mut words = stage::flat_map(|line: String| {
///     line.split_whitespace().map(str::to_owned).collect::<Vec<_>>()
/// });
/// let mut buf = std::collections::VecDeque::new();
/// words.process("a b c".into(), &mut Outbox::new(&mut buf)).unwrap();
/// assert_eq!(buf.len(), 3);
/// ```
pub fn flat_map<In, I, F>(f: F) -> FlatMap<F, In>
where
    I: IntoIterator,
    F: FnMut(In) -> I + Send + 'static,
{
    FlatMap {
        f,
        _in: std::marker::PhantomData,
    }
}

/// A stage that keeps the items for which the predicate holds.
pub fn filter<T, F>(f: F) -> Filter<F, T>
where
    F: FnMut(&T) -> bool + Send + 'static,
{
    Filter {
        f,
        _t: std::marker::PhantomData,
    }
}

/// A sink stage that hands every item to a closure and emits nothing.
pub fn for_each<T, F>(f: F) -> ForEach<F, T>
where
    F: FnMut(T) + Send + 'static,
{
    ForEach {
        f,
        _t: std::marker::PhantomData,
    }
}

/// See [`map`].
pub struct Map<F, In> {
    f: F,
    _in: std::marker::PhantomData<fn(In)>,
}

/// See [`try_map`].
pub struct TryMap<F, In> {
    f: F,
    _in: std::marker::PhantomData<fn(In)>,
}

/// See [`flat_map`].
pub struct FlatMap<F, In> {
    f: F,
    _in: std::marker::PhantomData<fn(In)>,
}

/// See [`filter`].
pub struct Filter<F, T> {
    f: F,
    _t: std::marker::PhantomData<fn(T)>,
}

/// See [`for_each`].
pub struct ForEach<F, T> {
    f: F,
    _t: std::marker::PhantomData<fn(T)>,
}

macro_rules! opaque_debug {
    ($($name:ident),*) => {$(
        impl<F, T> fmt::Debug for $name<F, T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(..)"))
            }
        }
    )*};
}
opaque_debug!(Map, TryMap, FlatMap, Filter, ForEach);

impl<In, Out, F> Stage for Map<F, In>
where
    In: Send + 'static,
    Out: Send + 'static,
    F: FnMut(In) -> Out + Send + 'static,
{
    type In = In;
    type Out = Out;
    type Error = Infallible;

    #[inline(always)]
    fn process(&mut self, item: In, out: &mut Outbox<'_, Out>) -> Result<(), Infallible> {
        out.push((self.f)(item));
        Ok(())
    }
}

impl<In, Out, E, F> Stage for TryMap<F, In>
where
    In: Send + 'static,
    Out: Send + 'static,
    E: fmt::Debug + fmt::Display + Send + 'static,
    F: FnMut(In) -> Result<Out, E> + Send + 'static,
{
    type In = In;
    type Out = Out;
    type Error = E;

    #[inline(always)]
    fn process(&mut self, item: In, out: &mut Outbox<'_, Out>) -> Result<(), E> {
        out.push((self.f)(item)?);
        Ok(())
    }
}

impl<In, I, F> Stage for FlatMap<F, In>
where
    In: Send + 'static,
    I: IntoIterator,
    I::Item: Send + 'static,
    F: FnMut(In) -> I + Send + 'static,
{
    type In = In;
    type Out = I::Item;
    type Error = Infallible;

    #[inline(always)]
    fn process(&mut self, item: In, out: &mut Outbox<'_, I::Item>) -> Result<(), Infallible> {
        out.extend((self.f)(item));
        Ok(())
    }
}

impl<T, F> Stage for Filter<F, T>
where
    T: Send + 'static,
    F: FnMut(&T) -> bool + Send + 'static,
{
    type In = T;
    type Out = T;
    type Error = Infallible;

    #[inline(always)]
    fn process(&mut self, item: T, out: &mut Outbox<'_, T>) -> Result<(), Infallible> {
        if (self.f)(&item) {
            out.push(item);
        }
        Ok(())
    }
}

impl<T, F> Stage for ForEach<F, T>
where
    T: Send + 'static,
    F: FnMut(T) + Send + 'static,
{
    type In = T;
    type Out = ();
    type Error = Infallible;

    #[inline(always)]
    fn process(&mut self, item: T, _out: &mut Outbox<'_, ()>) -> Result<(), Infallible> {
        (self.f)(item);
        Ok(())
    }
}
