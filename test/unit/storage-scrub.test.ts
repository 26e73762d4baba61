// The scrub loop (scrub.ts): waits while the cache is busy, covers every block in a pass, honours its rate
// bound and stops at once on stop() or its signal.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { startScrubber, type ScrubTarget } from '../../src/blockstack/scrub.js'

function target (blockCount: number, busyPolls: number): ScrubTarget & { seen: Array<{ index: number, all: boolean }>, polls: number } {
  const t = {
    blockCount,
    seen: [] as Array<{ index: number, all: boolean }>,
    polls: 0,
    idle: () => ++t.polls > busyPolls,
    scrubBlock: async (index: number, { all }: { all: boolean }) => {
      t.seen.push({ index, all })
      return { result: index === 3 ? 'corrupt' as const : 'ok' as const, bytes: 1024 }
    }
  }
  return t
}

/** Yields to the event loop until `done()`, at most 100,000 turns. */
async function until (done: () => boolean): Promise<void> {
  for (let i = 0; i < 100_000 && !done(); i++) await new Promise(resolve => setImmediate(resolve))
  assert.ok(done())
}

test('a pass waits for idle, checks every block once, counts the corrupt ones', { timeout: 10_000 }, async () => {
  const t = target(8, 3)
  const scrubber = startScrubber(t, { idlePollMs: 1, rateBytesPerSec: 1e12, intervalMs: 3_600_000 })
  await scrubber.waitPasses(1)
  assert.ok(t.polls > 3, 'the scrub polled a busy cache before it began')
  assert.deepEqual(t.seen.map(s => s.index), [0, 1, 2, 3, 4, 5, 6, 7])
  assert.ok(t.seen.every(s => !s.all), 'the first pass covers only blocks not checked since the start')
  assert.deepEqual(scrubber.stats(), { passes: 1, checkedBlocks: 8, corruptBlocks: 1 })
  await scrubber.stop()
})

test('the rate bound holds the scrub back, and stop() and the signal end it at once', { timeout: 10_000 }, async () => {
  // 1 KiB per block at 1 KiB/s: after the first block the scrub waits about a second, which stop() cuts short.
  const t = target(100, 0)
  const scrubber = startScrubber(t, { rateBytesPerSec: 1024 })
  await until(() => t.seen.length > 0)
  await scrubber.stop()
  assert.equal(t.seen.length, 1)
  assert.equal(scrubber.stats().passes, 0)
  await scrubber.waitPasses(5) // resolves at once once stopped

  const controller = new AbortController()
  const u = target(100, 0)
  const viaSignal = startScrubber(u, { rateBytesPerSec: 1024, signal: controller.signal })
  await until(() => u.seen.length > 0)
  controller.abort()
  await viaSignal.stop()
  assert.equal(u.seen.length, 1)
})
