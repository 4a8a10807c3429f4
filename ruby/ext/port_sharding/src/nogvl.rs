//! Running Rust without Ruby's GVL, interruptibly.
//!
//! magnus has no helper for this, so we call `rb_thread_call_without_gvl2` ourselves. The "2" variant
//! matters: it returns to us when Ruby wants to interrupt the thread (Ctrl-C trapped by Ruby,
//! `Thread#raise`, `Timeout.timeout`, `Thread#kill`) instead of jumping over our Rust frames, and it
//! does not run `func` at all when an interrupt is already pending. The caller then raises the pending
//! interrupt with `Ruby::thread_check_ints`, once its Rust values are dropped properly.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What happened to a closure handed to [`nogvl`].
pub enum Outcome<R> {
    /// It ran (the unblocking function may have been called meanwhile) and returned this.
    Done(R),
    /// Ruby had an interrupt pending and never called it.
    NotRun,
    /// It panicked; the payload's message.
    Panicked(String),
}

/// The closure and its result; the unblocking function gets a separate pointer, so the two threads
/// never hold references to the same object.
struct Job<F, R> {
    func: Option<F>,
    result: Option<std::thread::Result<R>>,
}

/// Runs `func` with the GVL released, so other Ruby threads run meanwhile. When Ruby wants to interrupt
/// this thread it calls `unblock` (from another thread, maybe with the GVL held elsewhere): it must make
/// `func` return soon and must not touch Ruby. Neither may unwind into Ruby: panics are caught.
pub fn nogvl<F, R, U>(func: F, unblock: U) -> Outcome<R>
where
    F: FnOnce() -> R,
    U: Fn() + Sync,
{
    let mut job = Job {
        func: Some(func),
        result: None,
    };
    let job_ptr = (&mut job as *mut Job<F, R>).cast::<c_void>();
    let unblock_ptr = (&unblock as *const U).cast_mut().cast::<c_void>();
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
    match job.result {
        None => Outcome::NotRun,
        Some(Ok(value)) => Outcome::Done(value),
        Some(Err(payload)) => Outcome::Panicked(panic_message(payload.as_ref())),
    }
}

extern "C" fn run<F: FnOnce() -> R, R>(data: *mut c_void) -> *mut c_void {
    // SAFETY: `data` is the `Job` that `nogvl` keeps alive; nothing else touches it during the call.
    let job = unsafe { &mut *data.cast::<Job<F, R>>() };
    if let Some(func) = job.func.take() {
        job.result = Some(catch_unwind(AssertUnwindSafe(func)));
    }
    std::ptr::null_mut()
}

extern "C" fn unblock_fn<U: Fn() + Sync>(data: *mut c_void) {
    // SAFETY: `data` is the `unblock` closure that `nogvl` keeps alive; it is only read (it is `Sync`).
    let unblock = unsafe { &*data.cast_const().cast::<U>() };
    // A panic must not unwind into Ruby's C frames; there is nothing better to do with one here.
    let _ = catch_unwind(AssertUnwindSafe(unblock));
}

/// The message of a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}
