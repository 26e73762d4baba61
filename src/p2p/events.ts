// The service's wake-up bus: code that waits for a condition on the service's state (a test, the manifest
// finder, a block job with no source yet) registers a waiter; every advert, heartbeat, connection and block
// event calls notify(), which wakes the waiters so they check their condition again.

export interface ServiceEvents {
  /** Something changed: wake every waiter. */
  notify: () => void
  /** Resolves once `predicate` holds (checked at every notify); rejects on abort. */
  waitFor: (predicate: () => boolean, signal: AbortSignal) => Promise<void>
  /** Resolves at the next notify; rejects on abort. */
  next: (signal: AbortSignal) => Promise<void>
}

export function createServiceEvents (): ServiceEvents {
  const waiters = new Set<() => void>()

  const notify = (): void => {
    if (waiters.size === 0) return
    const woken = [...waiters]
    waiters.clear()
    for (const wake of woken) wake()
  }

  const next = async (signal: AbortSignal): Promise<void> => {
    signal.throwIfAborted()
    await new Promise<void>((resolve, reject) => {
      const wake = (): void => { signal.removeEventListener('abort', onAbort); resolve() }
      const onAbort = (): void => { waiters.delete(wake); reject(signal.reason) }
      waiters.add(wake)
      signal.addEventListener('abort', onAbort, { once: true })
    })
  }

  const waitFor = async (predicate: () => boolean, signal: AbortSignal): Promise<void> => {
    while (!predicate()) await next(signal)
  }

  return { notify, waitFor, next }
}
