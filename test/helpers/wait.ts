// The one way tests wait: for an event, or for a status to change, always with a bound. A probe is checked
// again whenever one of the given emitters fires (no lost wake-ups), and otherwise on a backoff that starts
// short and grows, so waiting on a daemon's RPC status does not become a busy loop. On timeout the error
// names what was awaited and the last value or error seen.

import type { EventEmitter } from 'node:events'

export class WaitTimeoutError extends Error {
  override name = 'WaitTimeoutError'
}

export interface WaitOptions {
  timeoutMs?: number
  signal?: AbortSignal
  /** Re-check the probe as soon as any of these events fires. */
  wakeOn?: Array<{ emitter: EventEmitter, event: string }>
  /** First and largest pause between checks when no event wakes it. */
  minIntervalMs?: number
  maxIntervalMs?: number
}

export const DEFAULT_WAIT_TIMEOUT_MS = 60_000

/** Resolves with the first value of `probe` other than undefined (a thrown error counts as "not yet"). */
export async function waitFor<T> (what: string, probe: () => T | undefined | Promise<T | undefined>, options: WaitOptions = {}): Promise<T> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_WAIT_TIMEOUT_MS
  const deadline = Date.now() + timeoutMs
  let interval = options.minIntervalMs ?? 10
  const maxInterval = options.maxIntervalMs ?? 250
  let last: unknown
  let lastError: Error | undefined
  let wake: (() => void) | undefined
  const onEvent = (): void => { wake?.() }
  for (const w of options.wakeOn ?? []) w.emitter.on(w.event, onEvent)
  try {
    for (;;) {
      options.signal?.throwIfAborted()
      try {
        const value = await probe()
        if (value !== undefined) return value
        last = value
      } catch (err) {
        lastError = err as Error
      }
      const left = deadline - Date.now()
      if (left <= 0) {
        throw new WaitTimeoutError(`timed out after ${timeoutMs} ms waiting for ${what}` +
          (lastError !== undefined ? ` (last error: ${lastError.message})` : last !== undefined ? ` (last: ${JSON.stringify(last)})` : ''))
      }
      await new Promise<void>(resolve => {
        const timer = setTimeout(done, Math.min(interval, left))
        function done (): void { clearTimeout(timer); wake = undefined; options.signal?.removeEventListener('abort', done); resolve() }
        wake = done
        options.signal?.addEventListener('abort', done, { once: true })
      })
      interval = Math.min(maxInterval, interval * 2)
    }
  } finally {
    for (const w of options.wakeOn ?? []) w.emitter.off(w.event, onEvent)
  }
}

/** The first `event` of `emitter` whose arguments pass `accept`; rejects on timeout or abort. */
export async function waitForEvent<A extends unknown[]> (what: string, emitter: EventEmitter, event: string, accept: (...args: A) => boolean = () => true, options: { timeoutMs?: number, signal?: AbortSignal } = {}): Promise<A> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_WAIT_TIMEOUT_MS
  return await new Promise<A>((resolve, reject) => {
    const timer = setTimeout(() => finish(new WaitTimeoutError(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs)
    const onAbort = (): void => finish(options.signal?.reason as Error)
    const listener = (...args: unknown[]): void => {
      if (accept(...(args as A))) finish(undefined, args as A)
    }
    function finish (err: Error | undefined, value?: A): void {
      clearTimeout(timer)
      emitter.off(event, listener)
      options.signal?.removeEventListener('abort', onAbort)
      if (err !== undefined) reject(err)
      else resolve(value as A)
    }
    if (options.signal?.aborted === true) { onAbort(); return }
    options.signal?.addEventListener('abort', onAbort, { once: true })
    emitter.on(event, listener)
  })
}
