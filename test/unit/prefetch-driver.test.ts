import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createPrefetcher, finalizeProfile, type PrefetcherInit, type Scheduler } from '../../src/prefetch/index.js'

const BS = 4096
const ROOT = 'ab'.repeat(32)

/** A store of `n` blocks with a presence bitmap the fake link fills. */
function makeStore (n: number) {
  const present = new Uint8Array(n)
  return { blockCount: n, blockSizeBytes: BS, rootHex: ROOT, has: (b: number) => present[b] === 1, present, presentCount: () => present.reduce((s, x) => s + x, 0) }
}

interface Request { kind: 'prefetch' | 'demand', blocks: readonly number[], resolve: () => void, reject: (err: Error) => void }

/**
 * The link to the parents, whose completions the test controls: `completeNext()` delivers one request.
 * FIFO, or demand-first when `priority` (as the p2p layer queues). A request whose signal aborts leaves the queue.
 */
class FakeLink {
  queue: Request[] = []
  log: string[] = []
  fetchCalls: Array<{ blocks: readonly number[], priority: string, signal: AbortSignal }> = []
  maxPrefetchInFlight = 0
  failNext = 0
  constructor (readonly store: ReturnType<typeof makeStore>, readonly priority = false) {}

  request (kind: Request['kind'], blocks: readonly number[], signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const req: Request = { kind, blocks, resolve, reject }
      this.queue.push(req)
      this.maxPrefetchInFlight = Math.max(this.maxPrefetchInFlight, this.queue.filter(r => r.kind === 'prefetch').length)
      signal?.addEventListener('abort', () => {
        const i = this.queue.indexOf(req)
        if (i >= 0) this.queue.splice(i, 1)
        this.log.push(`${kind}-aborted:${blocks.join(',')}`)
        reject(signal.reason as Error)
      }, { once: true })
    })
  }

  fetch: PrefetcherInit['fetch'] = async (blocks, { signal, priority }) => {
    this.fetchCalls.push({ blocks, priority, signal })
    await this.request('prefetch', blocks, signal)
  }

  completeNext (): string | undefined {
    const i = this.priority ? Math.max(0, this.queue.findIndex(r => r.kind === 'demand')) : 0
    const req = this.queue.splice(i, 1)[0]
    if (req === undefined) return undefined
    if (req.kind === 'prefetch' && this.failNext > 0) {
      this.failNext--
      this.log.push(`prefetch-failed:${req.blocks.join(',')}`)
      req.reject(new Error('parent went away'))
      return 'failed'
    }
    for (const b of req.blocks) this.store.present[b] = 1
    this.log.push(`${req.kind}:${req.blocks.join(',')}`)
    req.resolve()
    return req.kind
  }
}

/** Lets promise callbacks (the prefetcher's completion handlers) run. Not a sleep: one turn of the event loop. */
const flush = async (): Promise<void> => { await new Promise<void>(resolve => setImmediate(resolve)) }

class ManualTime implements Scheduler {
  nowMs = 0
  private timers: Array<{ id: number, dueMs: number, fn: () => void }> = []
  private nextId = 1
  clock = { nowMs: () => this.nowMs }
  setTimeout = (fn: () => void, delayMs: number): unknown => {
    const id = this.nextId++
    this.timers.push({ id, dueMs: this.nowMs + delayMs, fn })
    return id
  }

  clearTimeout = (handle: unknown): void => { this.timers = this.timers.filter(t => t.id !== handle) }
  get pending (): number { return this.timers.length }
  /** Runs timers due now (not those they schedule for now: one round). */
  runDue (): number {
    const due = this.timers.filter(t => t.dueMs <= this.nowMs)
    this.timers = this.timers.filter(t => t.dueMs > this.nowMs)
    for (const t of due) t.fn()
    return due.length
  }

  advance (ms: number): void { this.nowMs += ms }
}

const idleNow = { idleHoldMs: 0 }

test('prefetch yields to an on-demand read: in-flight batches aborted, the demand read completes first', { timeout: 10_000 }, async () => {
  const store = makeStore(64)
  const link = new FakeLink(store) // FIFO: only the prefetcher's yielding lets the demand read go first
  const time = new ManualTime()
  const p = createPrefetcher({ store, fetch: link.fetch, clock: time.clock, scheduler: time, batchBlocks: 4, maxInFlightBatches: 2, idle: idleNow, abortInFlightOnDemand: true })
  assert.deepEqual(p.tick(), { mode: 'idle', batchesStarted: 2, blocksRequested: 8 })
  assert.equal(link.queue.length, 2)

  // A VM reads block 40, which is missing: the daemon tells the prefetcher, then fetches on demand.
  p.onDemandStart()
  const demand = link.request('demand', [40]).then(() => { p.onDemandEnd() })
  await flush()
  assert.deepEqual(link.queue.map(r => r.kind), ['demand'])
  assert.equal(p.tick().mode, 'paused')
  assert.equal(link.fetchCalls.length, 2, 'no batch starts while the demand read is pending')
  assert.equal(link.completeNext(), 'demand')
  await demand
  await flush()
  assert.deepEqual(link.log, ['prefetch-aborted:0,1,2,3', 'prefetch-aborted:4,5,6,7', 'demand:40'])

  // Resumes: the aborted blocks first, then on to the end of the image.
  for (let i = 0; i < 100 && p.progress().mode !== 'done'; i++) {
    p.tick()
    link.completeNext()
    await flush()
  }
  assert.deepEqual(link.log.slice(3, 5), ['prefetch:0,1,2,3', 'prefetch:4,5,6,7'])
  assert.equal(store.presentCount(), 64)
  const progress = p.progress()
  assert.equal(progress.mode, 'done')
  assert.equal(progress.blocksRemaining, 0)
  assert.equal(progress.blocksFetched, 63, 'block 40 came on demand')
  assert.equal(progress.bytesFetched, 63 * BS)
  const completedBlocks = link.fetchCalls.filter(c => !c.signal.aborted).flatMap(c => c.blocks)
  assert.equal(new Set(completedBlocks).size, 63, 'no block fetched twice')
  assert.equal(completedBlocks.length, 63)
  assert.equal(link.maxPrefetchInFlight, 2)
})

test('pause mode: no new batch while a demand read is pending; prefetch asks with priority prefetch', { timeout: 10_000 }, async () => {
  const store = makeStore(32)
  const link = new FakeLink(store, true) // the p2p layer's queue: demand before prefetch
  const time = new ManualTime()
  let pendingReads = 0 // the caller's own counter, read through pendingOnDemand
  const p = createPrefetcher({ store, fetch: link.fetch, clock: time.clock, scheduler: time, batchBlocks: 2, maxInFlightBatches: 3, idle: idleNow, pendingOnDemand: () => pendingReads })
  assert.equal(p.tick().batchesStarted, 3)
  pendingReads++
  const demand = link.request('demand', [30]).then(() => { pendingReads-- })
  // While the read is pending, completions free slots but nothing new starts.
  assert.equal(link.completeNext(), 'demand')
  await demand
  pendingReads++
  const demand2 = link.request('demand', [31]).then(() => { pendingReads-- })
  assert.equal(link.completeNext(), 'demand')
  await flush()
  // Ticks while a read is pending start nothing.
  pendingReads++
  assert.equal(p.tick().mode, 'paused')
  pendingReads--
  await demand2
  assert.equal(link.completeNext(), 'prefetch')
  await flush()
  assert.deepEqual(link.log, ['demand:30', 'demand:31', 'prefetch:0,1'])
  assert.equal(link.fetchCalls.length, 3)
  assert.ok(link.fetchCalls.every(c => c.priority === 'prefetch' && c.signal instanceof AbortSignal))
  assert.equal(p.tick().batchesStarted, 1)
  await p.stop()
})

test('started with an injected scheduler it runs itself to the end, yields mid-way, and stops ticking when done', { timeout: 10_000 }, async () => {
  const store = makeStore(100)
  const link = new FakeLink(store)
  const time = new ManualTime()
  const p = createPrefetcher({ store, fetch: link.fetch, clock: time.clock, scheduler: time, batchBlocks: 5, maxInFlightBatches: 2, idle: idleNow, abortInFlightOnDemand: true, tickMs: 100 })
  p.start()
  const order: string[] = []
  let demand: Promise<void> | undefined
  for (let step = 0; step < 200 && p.progress().mode !== 'done'; step++) {
    time.runDue()
    if (step === 6) {
      p.onDemandStart()
      demand = link.request('demand', [97]).then(() => { order.push('demand'); p.onDemandEnd() })
      await flush()
    }
    const kind = link.completeNext()
    if (kind === 'prefetch' && demand !== undefined) order.push('prefetch')
    await flush()
    time.advance(10)
  }
  assert.equal(order[0], 'demand', 'the first completion after the demand read arrived is the demand read')
  assert.ok(order.length > 5)
  assert.equal(store.presentCount(), 100)
  assert.equal(p.progress().mode, 'done')
  // progress() says done as soon as the last block is present; the tick due then runs and schedules no other.
  time.runDue()
  assert.equal(time.pending, 0, 'no timer left once the image is complete')
  assert.ok(link.maxPrefetchInFlight <= 2)
  await p.stop()
})

test('read-ahead follows the instance reads; idle prefetch waits for a quiet link', { timeout: 10_000 }, async () => {
  const store = makeStore(64)
  const link = new FakeLink(store)
  const time = new ManualTime()
  const profile = finalizeProfile({
    imageId: 'img', rootHex: ROOT, blockSizeBytes: BS, blockCount: 64, boots: 1,
    entries: [50, 51, 52, 53, 10, 11, 12, 13, 30, 31, 32, 33].map((block, i) => ({ block, tMs: i, confidence: 1 }))
  })
  const p = createPrefetcher({ store, fetch: link.fetch, clock: time.clock, scheduler: time, profile, batchBlocks: 2, maxInFlightBatches: 1, readAhead: { initialWindowBlocks: 2, maxWindowBlocks: 4 }, idle: { idleHoldMs: 1000 } })
  assert.equal(p.tick().mode, 'waiting', 'no instance, link not idle long enough yet')
  p.instanceStarted('vm1')
  assert.deepEqual(p.tick(), { mode: 'readAhead', batchesStarted: 1, blocksRequested: 2 })
  assert.deepEqual(link.fetchCalls.at(-1)?.blocks, [50, 51])
  link.completeNext(); await flush()
  // The VM reads block 11 (on demand; a miss): read-ahead jumps to what follows it in the profile.
  p.noteRead('vm1', 11 * BS, 100, false)
  p.tick()
  assert.deepEqual(link.fetchCalls.at(-1)?.blocks, [12, 13])
  link.completeNext(); await flush()
  p.noteRead('vm1', 12 * BS, 2 * BS, true) // a hit on prefetched blocks: the window doubles
  p.tick()
  assert.deepEqual(link.fetchCalls.at(-1)?.blocks, [30, 31])
  link.completeNext(); await flush()
  p.instanceStopped('vm1')
  // Busy link: no idle prefetch.
  p.noteUtilization(0.9)
  time.advance(2000)
  p.noteUtilization(0.9)
  assert.equal(p.tick().mode, 'waiting')
  time.advance(500)
  p.noteUtilization(0.1)
  time.advance(1001) // the busy samples left the window; quiet must last idleHoldMs
  p.noteUtilization(0.1)
  assert.equal(p.tick().mode, 'waiting')
  time.advance(1000)
  p.noteUtilization(0.1)
  const t = p.tick()
  assert.equal(t.mode, 'idle')
  // Idle order: rest of the profile first.
  assert.deepEqual(link.fetchCalls.at(-1)?.blocks, [52, 53])
  await p.stop()
  assert.equal(p.tick().mode, 'stopped')
})

test('idle prefetch is rate limited by the token bucket', { timeout: 10_000 }, async () => {
  const store = makeStore(256)
  const link = new FakeLink(store)
  const time = new ManualTime()
  const rateBytesPerSec = 8 * BS
  const p = createPrefetcher({ store, fetch: link.fetch, clock: time.clock, scheduler: time, batchBlocks: 4, maxInFlightBatches: 4, idle: idleNow, rateBytesPerSec, burstBytes: 4 * BS })
  let requested = 0
  for (let ms = 0; ms <= 10_000; ms += 50) {
    requested += p.tick().blocksRequested * BS
    while (link.completeNext() !== undefined) { /* deliver everything at once: only the bucket limits */ }
    await flush()
    assert.ok(requested <= 4 * BS + rateBytesPerSec * time.nowMs / 1000, `${requested} bytes by ${time.nowMs} ms`)
    time.advance(50)
  }
  assert.ok(requested >= rateBytesPerSec * 9, `rate used: ${requested}`)
  await p.stop()
})

test('a failed batch backs off and is fetched again; progress and ETA', { timeout: 10_000 }, async () => {
  const store = makeStore(16)
  const link = new FakeLink(store)
  const time = new ManualTime()
  const p = createPrefetcher({ store, fetch: link.fetch, clock: time.clock, scheduler: time, batchBlocks: 4, maxInFlightBatches: 1, idle: idleNow })
  assert.equal(p.progress().etaMs, null)
  p.tick()
  time.advance(100)
  link.completeNext(); await flush()
  // 4 blocks in 100 ms of fetching: 12 left at that rate.
  assert.deepEqual({ ...p.progress(), mode: undefined }, { mode: undefined, bytesFetched: 4 * BS, blocksFetched: 4, blocksRemaining: 12, etaMs: 300, inFlightBatches: 0, failedBatches: 0, instances: 0 })
  p.tick()
  link.failNext = 1
  assert.equal(link.completeNext(), 'failed'); await flush()
  assert.equal(p.progress().failedBatches, 1)
  assert.equal(p.tick().mode, 'waiting', 'backing off')
  time.advance(600)
  p.tick()
  assert.deepEqual(link.fetchCalls.at(-1)?.blocks, [4, 5, 6, 7], 'the failed blocks go first')
  for (let i = 0; i < 10; i++) { link.completeNext(); await flush(); p.tick() }
  assert.equal(p.progress().mode, 'done')
  assert.equal(p.progress().etaMs, 0)
})

test('stop() and the AbortSignal abort in-flight batches and end ticking', { timeout: 10_000 }, async () => {
  const store = makeStore(64)
  const link = new FakeLink(store)
  const time = new ManualTime()
  const ac = new AbortController()
  const p = createPrefetcher({ store, fetch: link.fetch, clock: time.clock, scheduler: time, batchBlocks: 4, maxInFlightBatches: 2, idle: idleNow, signal: ac.signal })
  p.start()
  time.runDue()
  assert.equal(link.queue.length, 2)
  ac.abort()
  await p.settled()
  assert.equal(link.queue.length, 0)
  assert.ok(link.fetchCalls.every(c => c.signal.aborted))
  assert.equal(p.progress().mode, 'stopped')
  assert.equal(time.runDue(), 0)
  assert.equal(time.pending, 0)
  assert.throws(() => { p.start() }, { name: 'PrefetcherStoppedError' })

  // A fetch that ignores its signal does not hold stop() beyond its bound.
  const stuck = createPrefetcher({ store, fetch: async () => { await new Promise(() => {}) }, clock: time.clock, scheduler: time, idle: idleNow, stopTimeoutMs: 1000 })
  stuck.tick()
  let stopped = false
  const s = stuck.stop().then(() => { stopped = true })
  await flush()
  assert.equal(stopped, false)
  time.advance(1000)
  time.runDue()
  await s
  assert.equal(stopped, true)
})

test('a profile for another image is refused', { timeout: 10_000 }, () => {
  const store = makeStore(64)
  const link = new FakeLink(store)
  const other = finalizeProfile({ imageId: 'img', rootHex: 'cd'.repeat(32), blockSizeBytes: BS, blockCount: 64, boots: 1, entries: [] })
  assert.throws(() => createPrefetcher({ store, fetch: link.fetch, profile: other }), { name: 'ProfileMismatchError' })
  const p = createPrefetcher({ store, fetch: link.fetch })
  assert.throws(() => { p.setProfile({ ...other, rootHex: ROOT, blockCount: 65 }) }, { name: 'ProfileMismatchError' })
})

test('progress is read consistently: mode is done as soon as every block is present, before any tick', { timeout: 10_000 }, async () => {
  const store = makeStore(16)
  const link = new FakeLink(store)
  const time = new ManualTime()
  const p = createPrefetcher({ store, fetch: link.fetch, clock: time.clock, scheduler: time, batchBlocks: 8, maxInFlightBatches: 2, idle: idleNow })
  assert.equal(p.tick().mode, 'idle')
  // The last blocks arrive (the batches complete, or on-demand reads fill them) and no tick has run since.
  link.completeNext()
  link.completeNext()
  for (let i = 0; i < 16; i++) store.present[i] = 1
  const before = p.progress()
  assert.equal(before.blocksRemaining, 0)
  assert.equal(before.mode, 'done', 'mode and blocksRemaining come from the same state')
  await flush()
  const after = p.progress()
  assert.equal(after.mode, 'done')
  // And the other way: a block that goes missing again (eviction) is not reported done.
  store.present[3] = 0
  assert.notEqual(p.progress().mode, 'done')
  assert.equal(p.progress().blocksRemaining, 1)
  await p.stop()
  store.present[3] = 1
  assert.equal(p.progress().mode, 'done', 'a stopped prefetcher of a complete image reports done, as the manager does')
})

test('first boot (no profile): sequential read-ahead after each read, also while the demand read is pending; idle waits', { timeout: 10_000 }, async () => {
  const store = { ...makeStore(64), isZero: (b: number) => b === 12 }
  store.present[12] = 1 // a zero block: present, and no place in the window
  store.present[13] = 1 // present: in the window, not fetched
  const link = new FakeLink(store, true)
  const time = new ManualTime()
  let pendingReads = 0
  const p = createPrefetcher({
    store, fetch: link.fetch, clock: time.clock, scheduler: time, batchBlocks: 8, maxInFlightBatches: 2, idle: idleNow,
    pendingOnDemand: () => pendingReads, sequential: { windowBlocks: 3, scanBlocks: 8 }
  })
  p.instanceStarted('vm')
  pendingReads++ // the VM's read of block 10 misses and waits for the link
  p.noteRead('vm', 10 * BS, BS, false)
  const t = p.tick()
  assert.deepEqual(t, { mode: 'readAhead', batchesStarted: 1, blocksRequested: 2 })
  assert.deepEqual(link.fetchCalls.at(-1)?.blocks, [11, 14])
  assert.equal(p.tick().batchesStarted, 0, 'the window is covered: nothing new, and idle waits for the demand read')
  pendingReads--
  link.completeNext(); await flush()
  pendingReads++
  assert.equal(p.tick().batchesStarted, 0, 'blocks that arrived still fill the window: it does not run away from the read')
  pendingReads--
  // A read near the end: the window stops at the image's end.
  p.noteRead('vm', 62 * BS, 2 * BS, true)
  assert.equal(p.tick().mode, 'idle', 'nothing follows block 63: idle prefetch (no demand pending) runs instead')
  assert.ok(link.fetchCalls.slice(1).every(c => !c.blocks.includes(64)))
  await p.stop()
})

test('sequential read-ahead waits while the gate is shut (peers boot the image: a wave), and resumes when it opens', { timeout: 10_000 }, async () => {
  const store = makeStore(64)
  const link = new FakeLink(store)
  const time = new ManualTime()
  let peersBooting = 2
  const p = createPrefetcher({
    store, fetch: link.fetch, clock: time.clock, scheduler: time, batchBlocks: 8, maxInFlightBatches: 2,
    idle: { idleHoldMs: 60_000 }, sequential: { windowBlocks: 3, scanBlocks: 8 }, sequentialGate: () => peersBooting === 0
  })
  p.instanceStarted('vm')
  p.noteRead('vm', 10 * BS, BS, false)
  assert.equal(p.tick().batchesStarted, 0, 'in a wave no sequential guess is fetched')
  assert.equal(link.fetchCalls.length, 0)
  peersBooting = 0
  assert.deepEqual(p.tick(), { mode: 'readAhead', batchesStarted: 1, blocksRequested: 3 })
  assert.deepEqual(link.fetchCalls.at(-1)?.blocks, [11, 12, 13])
  await p.stop()
})

test('with a profile, a read the profile does not list switches that instance to sequential read-ahead', { timeout: 10_000 }, async () => {
  const store = makeStore(64)
  const link = new FakeLink(store)
  const time = new ManualTime()
  const profile = finalizeProfile({
    imageId: 'img', rootHex: ROOT, blockSizeBytes: BS, blockCount: 64, boots: 1,
    entries: [50, 51, 52, 53].map((block, i) => ({ block, tMs: i, confidence: 1 }))
  })
  const p = createPrefetcher({
    store, fetch: link.fetch, clock: time.clock, scheduler: time, profile, batchBlocks: 2, maxInFlightBatches: 4,
    readAhead: { initialWindowBlocks: 2, maxWindowBlocks: 2 }, sequential: { windowBlocks: 2, scanBlocks: 4 }, idle: { idleHoldMs: 60_000 }
  })
  p.instanceStarted('vm')
  p.tick()
  assert.deepEqual(link.fetchCalls.map(c => c.blocks), [[50, 51]], 'profile order before the first read')
  p.noteRead('vm', 20 * BS, BS, false) // off the profile
  p.tick()
  assert.deepEqual(link.fetchCalls.at(-1)?.blocks, [21, 22])
  p.noteRead('vm', 51 * BS, BS, false) // back on the profile
  p.tick()
  assert.deepEqual(link.fetchCalls.at(-1)?.blocks, [52, 53])
  await p.stop()
})
