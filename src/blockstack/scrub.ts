// Background scrub of a block cache: re-reads stored blocks and checks them against the manifest, so bit rot
// on the host's disk is found (and the block dropped and fetched again) before a VM or a peer reads it.
//
// The first pass after a start covers the blocks not yet checked since the start (the cache also checks each
// of those on its first read); later passes, every `intervalMs`, cover every stored block. The scrub runs only
// while the cache is idle, at a bounded rate, and stops at once on stop() or its signal.

import { setTimeout as delay } from 'node:timers/promises'

/** Bytes checked per second at most: a 1 GiB cache is scrubbed in about 32 s of idle time. */
export const DEFAULT_SCRUB_RATE_BYTES_PER_SEC = 32 * 1024 * 1024
/** Time between full passes after the first. */
export const DEFAULT_SCRUB_INTERVAL_MS = 24 * 3600 * 1000
/** How often a scrub paused for a busy cache looks again. */
export const SCRUB_IDLE_POLL_MS = 250
/** A cache is idle when no read came in for this long. */
export const SCRUB_IDLE_AFTER_MS = 1000

export type ScrubResult = 'skipped' | 'ok' | 'corrupt'

/** What the scrub needs of a cache. */
export interface ScrubTarget {
  readonly blockCount: number
  /**
   * Checks one stored block (`all` false: only when not yet checked since the start). Reading and dropping
   * are the cache's business: a corrupt block is dropped, counted and fetched again there.
   */
  scrubBlock: (index: number, options: { all: boolean, signal: AbortSignal }) => Promise<{ result: ScrubResult, bytes: number }>
  /** True when nobody is reading: the scrub waits otherwise. */
  idle: () => boolean
}

export interface ScrubOptions {
  rateBytesPerSec?: number
  intervalMs?: number
  idlePollMs?: number
  /** Stops the scrub, as stop() does. */
  signal?: AbortSignal
}

export interface ScrubStats {
  passes: number
  checkedBlocks: number
  corruptBlocks: number
}

export interface Scrubber {
  stats: () => ScrubStats
  /** Resolves when the scrub has stopped. */
  stop: () => Promise<void>
  /** Resolves once `passes` passes are over (or the scrub stopped): for tests and the crash trials. */
  waitPasses: (passes: number) => Promise<void>
}

export class ScrubStoppedError extends Error {
  override name = 'ScrubStoppedError'
}

export function startScrubber (target: ScrubTarget, options: ScrubOptions = {}, onError: (err: Error) => void = () => {}): Scrubber {
  const rateBytesPerSec = options.rateBytesPerSec ?? DEFAULT_SCRUB_RATE_BYTES_PER_SEC
  const intervalMs = options.intervalMs ?? DEFAULT_SCRUB_INTERVAL_MS
  const idlePollMs = options.idlePollMs ?? SCRUB_IDLE_POLL_MS
  const controller = new AbortController()
  const signal = options.signal === undefined ? controller.signal : AbortSignal.any([controller.signal, options.signal])
  const stats: ScrubStats = { passes: 0, checkedBlocks: 0, corruptBlocks: 0 }
  let passWaiters: Array<{ passes: number, resolve: () => void }> = []

  const waitIdle = async (): Promise<void> => {
    // Bounded by the scrub's own signal: a busy cache pauses the scrub, it never spins.
    while (!target.idle()) await delay(idlePollMs, undefined, { signal })
  }

  const pass = async (all: boolean): Promise<void> => {
    const startedMs = performance.now()
    let bytes = 0
    for (let index = 0; index < target.blockCount; index++) {
      signal.throwIfAborted()
      await waitIdle()
      const checked = await target.scrubBlock(index, { all, signal })
      if (checked.result === 'skipped') continue
      stats.checkedBlocks++
      if (checked.result === 'corrupt') stats.corruptBlocks++
      bytes += checked.bytes
      // Rate bound: never ahead of rateBytesPerSec since the pass began.
      const aheadMs = bytes / rateBytesPerSec * 1000 - (performance.now() - startedMs)
      if (aheadMs > 1) await delay(aheadMs, undefined, { signal })
    }
  }

  const run = (async () => {
    for (let all = false; !signal.aborted; all = true) {
      try {
        await pass(all)
        stats.passes++
      } catch (err) {
        if (signal.aborted) break
        onError(err as Error)
      }
      const due = passWaiters.filter(w => w.passes <= stats.passes)
      passWaiters = passWaiters.filter(w => w.passes > stats.passes)
      for (const w of due) w.resolve()
      await delay(intervalMs, undefined, { signal }).catch(() => {})
    }
  })()

  return {
    stats: () => ({ ...stats }),
    async stop () {
      controller.abort(new ScrubStoppedError('scrub stopped'))
      await run
      for (const w of passWaiters) w.resolve()
      passWaiters = []
    },
    async waitPasses (passes) {
      if (signal.aborted || stats.passes >= passes) return
      await new Promise<void>(resolve => { passWaiters.push({ passes, resolve }) })
    }
  }
}
