//! Running Rust without Ruby's GVL, interruptibly.
//!
//! magnus has no helper for this, so we call `rb_thread_call_without_gvl2` ourselves. The "2" variant
//! matters: it returns to us when Ruby wants to interrupt the thread (Ctrl-C trapped by Ruby,
//! `Thread#raise`, `Timeout.timeout`, `Thread#kill`) instead of jumping over our Rust frames, and it
//! does not run `func` at all when an interrupt is already pending. The caller raises the pending
//! interrupt with `Ruby::thread_check_ints` once its Rust values are dropped properly.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use magnus::{Error, Ruby};

use crate::errors;

/// How often `nogvl` starts `func` again when Ruby had an interrupt pending that raised nothing (a trap
/// handler that returned): bounded so it cannot spin.
const ATTEMPTS: usize = 100;

/// Runs `func` with the GVL released, so other Ruby threads run meanwhile, and returns what it returned.
/// When Ruby wants to interrupt this thread it calls `unblock` (from another thread, maybe with the GVL
/// held elsewhere): it must make `func` return soon and must not touch Ruby. A panic in either becomes
/// `PortSharding::Error`. Pending interrupts are the caller's to raise afterwards (`thread_check_ints`).
pub fn nogvl<R>(
    ruby: &Ruby,
    mut func: impl FnMut() -> R,
    unblock: impl Fn() + Sync,
) -> Result<R, Error> {
    for _ in 0..ATTEMPTS {
        match call(&mut func, &unblock) {
            Some(Ok(value)) => return Ok(value),
            Some(Err(panic)) => {
                let e = port_sharding::Error::from_panic(panic.as_ref());
                return Err(errors::to_ruby(ruby, e));
            }
            // An interrupt was pending before `func` ran: raise it, or run `func` if it raised nothing.
            None => ruby.thread_check_ints()?,
        }
    }
    let e = port_sharding::Error::Internal("Ruby kept interrupting a call into the engine".into());
    Err(errors::to_ruby(ruby, e))
}

/// The closure and its result; the unblocking function gets a separate pointer, so the two threads
/// never hold references to the same object.
struct Job<'a, F, R> {
    func: &'a mut F,
    result: Option<std::thread::Result<R>>,
}

/// One `rb_thread_call_without_gvl2`: `None` when Ruby did not call `func`.
fn call<F: FnMut() -> R, R, U: Fn() + Sync>(
    func: &mut F,
    unblock: &U,
) -> Option<std::thread::Result<R>> {
    let mut job = Job { func, result: None };
    let job_ptr = (&mut job as *mut Job<F, R>).cast::<c_void>();
    let unblock_ptr = (unblock as *const U).cast_mut().cast::<c_void>();
    // SAFETY: `job` and `unblock` outlive the call. Ruby runs `run` at most once, on this thread, and
    // `unblock_fn` only while the blocking region is active, i.e. before this call returns.
    unsafe {
        rb_sys::rb_thread_call_without_gvl2(
            Some(run::<F, R>),
            job_ptr,
            Some(unblock_fn::<U>),
            unblock_ptr,
        );
    }
    job.result
}

extern "C" fn run<F: FnMut() -> R, R>(data: *mut c_void) -> *mut c_void {
    // SAFETY: `data` is the `Job` that `call` keeps alive; nothing else touches it during the call.
    let job = unsafe { &mut *data.cast::<Job<F, R>>() };
    job.result = Some(catch_unwind(AssertUnwindSafe(&mut *job.func)));
    std::ptr::null_mut()
}

extern "C" fn unblock_fn<U: Fn() + Sync>(data: *mut c_void) {
    // SAFETY: `data` is the `unblock` closure that `call` keeps alive; it is only read (it is `Sync`).
    let unblock = unsafe { &*data.cast_const().cast::<U>() };
    // A panic must not unwind into Ruby's C frames; there is nothing better to do with one here.
    catch_unwind(AssertUnwindSafe(unblock)).ok();
}

/// Runs `f` with the GVL, from a Ruby thread that released it (inside [`nogvl`]): how the supervisor,
/// running without the GVL, forks through Ruby. A panic is returned, not unwound through Ruby's frames.
pub fn with_gvl<F: FnOnce() -> R, R>(f: F) -> std::thread::Result<R> {
    struct Once<F, R> {
        f: Option<F>,
        out: Option<std::thread::Result<R>>,
    }
    extern "C" fn run<G: FnOnce() -> T, T>(data: *mut c_void) -> *mut c_void {
        // SAFETY: `data` is the `Once` that `with_gvl` keeps alive for the call.
        let once = unsafe { &mut *data.cast::<Once<G, T>>() };
        if let Some(f) = once.f.take() {
            once.out = Some(catch_unwind(AssertUnwindSafe(f)));
        }
        std::ptr::null_mut()
    }
    let mut once = Once {
        f: Some(f),
        out: None,
    };
    // SAFETY: `once` outlives the call; Ruby runs `run` on this thread with the GVL held.
    unsafe {
        rb_sys::rb_thread_call_with_gvl(
            Some(run::<F, R>),
            (&mut once as *mut Once<F, R>).cast::<c_void>(),
        );
    }
    once.out
        .unwrap_or_else(|| Err(Box::new("rb_thread_call_with_gvl did not run the call")))
}
