// A signal that aborts when its parent does or when a timeout passes, for the per-request hot path.
//
// Why not AbortSignal.any([parent, AbortSignal.timeout(ms)]): in node 20 each call builds two signals, weak
// references from every source to the composite and a finalization registration, and the timeout signal's
// timer is only cleared by GC. A block fetch made one such pair per batch at the cache, per relay hop and per
// peer-source fetch; with dispose() here the timer and the listener go as soon as the work is done.

/** The time passed. Named as AbortSignal.timeout's reason is, so callers that test `name` see no difference. */
export class DeadlineError extends Error {
  override name = 'TimeoutError'
}

export interface Deadline {
  readonly signal: AbortSignal
  /** Clears the timer and stops following the parent; the signal stays as it is. Idempotent. */
  dispose: () => void
}

/** Aborts with the parent's reason when `parent` aborts, or with a TimeoutError after `timeoutMs`. */
export function deadline (parent: AbortSignal, timeoutMs: number, what = 'operation'): Deadline {
  const controller = new AbortController()
  if (parent.aborted) {
    controller.abort(parent.reason)
    return { signal: controller.signal, dispose: () => {} }
  }
  const onAbort = (): void => { dispose(); controller.abort(parent.reason) }
  const timer = setTimeout(() => {
    dispose()
    controller.abort(new DeadlineError(`${what} timed out after ${timeoutMs} ms`))
  }, timeoutMs)
  timer.unref?.()
  let disposed = false
  function dispose (): void {
    if (disposed) return
    disposed = true
    clearTimeout(timer)
    parent.removeEventListener('abort', onAbort)
  }
  parent.addEventListener('abort', onAbort, { once: true })
  return { signal: controller.signal, dispose }
}
