// The service's wake-up bus: code that waits for a condition on the service's state (a test, the manifest
// finder) registers a waiter; every advert, heartbeat, connection and block event calls notify(), which wakes
// the waiters so they check their condition again. Block jobs with no source yet wait on a narrower channel,
// per image: only what can change an image's sources (an advert of it, a heartbeat of it, a connection,
// a ban) wakes them, not the stream of new blocks.

export interface ServiceEvents {
  /** Something changed: wake every waiter. */
  notify: () => void
  /** Resolves once `predicate` holds (checked at every notify); rejects on abort. */
  waitFor: (predicate: () => boolean, signal: AbortSignal) => Promise<void>
  /** Resolves at the next notify; rejects on abort. */
  next: (signal: AbortSignal) => Promise<void>
  /** The sources of an image (undefined: of every image) may have changed. */
  sourcesChanged: (rootHex?: string) => void
  /** Resolves at the next sourcesChanged for this image (or for all); rejects on abort. */
  nextSourcesChange: (rootHex: string, signal: AbortSignal) => Promise<void>
  /** Counts sourcesChanged calls (any image): a value computed from adverts and connections is current while it holds. */
  sourcesEpoch: () => number
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

  const sourceWaiters = new Map<string, Set<() => void>>()
  let epoch = 0

  const wakeAll = (set: Set<() => void> | undefined): void => {
    if (set === undefined || set.size === 0) return
    const woken = [...set]
    set.clear()
    for (const wake of woken) wake()
  }

  const sourcesChanged = (rootHex?: string): void => {
    epoch++
    if (rootHex !== undefined) { wakeAll(sourceWaiters.get(rootHex)); return }
    for (const set of sourceWaiters.values()) wakeAll(set)
  }

  const nextSourcesChange = async (rootHex: string, signal: AbortSignal): Promise<void> => {
    signal.throwIfAborted()
    let set = sourceWaiters.get(rootHex)
    if (set === undefined) { set = new Set(); sourceWaiters.set(rootHex, set) }
    const waiters = set
    await new Promise<void>((resolve, reject) => {
      const wake = (): void => { signal.removeEventListener('abort', onAbort); resolve() }
      const onAbort = (): void => { waiters.delete(wake); reject(signal.reason) }
      waiters.add(wake)
      signal.addEventListener('abort', onAbort, { once: true })
    })
    if (waiters.size === 0 && sourceWaiters.get(rootHex) === waiters) sourceWaiters.delete(rootHex)
  }

  return { notify, waitFor, next, sourcesChanged, nextSourcesChange, sourcesEpoch: () => epoch }
}
