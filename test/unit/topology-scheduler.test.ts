import { test } from 'node:test'
import assert from 'node:assert/strict'
import {
  chooseFailover, chooseHedgeTarget, chooseSource, DEFAULT_SCHEDULER_PARAMS, expectedCompletionMs, hedgeDeadlineMs,
  rankSources, shouldHedge, sourceHolds, TopologyParamsError, validateSchedulerParams
} from '../../src/topology/index.js'
import type { SourceState } from '../../src/topology/index.js'

const MiB = 1024 * 1024
const req = { blockIndex: 5, sizeBytes: 64 * 1024 }
const src = (peerId: string, over: Partial<SourceState> = {}): SourceState => ({
  peerId, holds: true, queuedBytes: 0, throughputBytesPerS: 100 * MiB, rttMs: 1, inFlight: 0, failed: false, ...over
})

test('holds: flag, predicate, bitmap (LSB first)', { timeout: 5000 }, () => {
  assert.equal(sourceHolds(true, 3), true)
  assert.equal(sourceHolds(i => i === 3, 3), true)
  const bm = new Uint8Array(2); bm[0] = 1 << 5; bm[1] = 1
  assert.equal(sourceHolds(bm, 5), true)
  assert.equal(sourceHolds(bm, 8), true)
  assert.equal(sourceHolds(bm, 4), false)
  assert.equal(sourceHolds(bm, 100), false)
})

test('chooses the lowest expected completion time: queue, throughput and RTT count', { timeout: 5000 }, () => {
  // a: idle but slow link; b: fast link with a queue; c: fast, short queue, far
  const a = src('a', { throughputBytesPerS: 5 * MiB })
  const b = src('b', { queuedBytes: 4 * MiB })
  const c = src('c', { queuedBytes: 256 * 1024, rttMs: 3 })
  const ea = expectedCompletionMs(a, req); const eb = expectedCompletionMs(b, req); const ec = expectedCompletionMs(c, req)
  assert.ok(Math.abs(ea - (1 + 12.5)) < 1e-9)
  assert.ok(Math.abs(eb - (1 + 40.625)) < 1e-9)
  assert.ok(Math.abs(ec - (3 + 3.125)) < 1e-9)
  assert.equal(chooseSource(req, [a, b, c])?.peerId, 'c')
  assert.equal(chooseSource(req, [a, b, c])?.index, 2, 'the position in the sources given')
  assert.deepEqual(rankSources(req, [a, b, c]).map(s => s.peerId), ['c', 'a', 'b'])
})

test('a holder beats a relay of the same speed; a relay is used when nobody holds the block', { timeout: 5000 }, () => {
  const holder = src('h', { holds: () => true, queuedBytes: 64 * 1024 })
  const relay = src('r', { holds: () => false })
  assert.equal(chooseSource(req, [relay, holder])?.peerId, 'h')
  assert.equal(chooseSource(req, [relay])?.holds, false)
})

test('failed and full sources: failed never, full only as last resort', { timeout: 5000 }, () => {
  assert.equal(chooseSource(req, [src('x', { failed: true })]), null)
  const full = src('full', { inFlight: DEFAULT_SCHEDULER_PARAMS.maxInFlightPerSource, rttMs: 0.1 })
  assert.equal(chooseSource(req, [full, src('slow', { rttMs: 50 })])?.peerId, 'slow')
  assert.equal(chooseSource(req, [full])?.peerId, 'full')
})

test('hedging: after hedgeFactor x expected (at least hedgeMinMs), to the second-best source, once', { timeout: 5000 }, () => {
  const r = { peerId: 'a', startedAtMs: 1000, expectedMs: 10, hedged: false }
  assert.equal(hedgeDeadlineMs(r), 1000 + 30)
  assert.equal(shouldHedge(r, 1029), false)
  assert.equal(shouldHedge(r, 1030), true)
  assert.equal(shouldHedge({ ...r, hedged: true }, 5000), false)
  assert.equal(hedgeDeadlineMs({ ...r, expectedMs: 1 }), 1000 + DEFAULT_SCHEDULER_PARAMS.hedgeMinMs)
  const sources = [src('a'), src('b', { rttMs: 2 }), src('c', { rttMs: 3 })]
  assert.equal(chooseHedgeTarget(req, sources, r)?.peerId, 'b')
  assert.equal(chooseHedgeTarget(req, [src('a')], r), null)
})

test('failover goes at once to the best remaining source', { timeout: 5000 }, () => {
  const sources = [src('a'), src('b', { rttMs: 2 }), src('c', { rttMs: 3 })]
  assert.equal(chooseFailover(req, sources, 'a')?.peerId, 'b')
  assert.equal(chooseFailover(req, sources, new Set(['a', 'b']))?.peerId, 'c')
})

test('scheduler params are validated by field', { timeout: 5000 }, () => {
  assert.throws(() => validateSchedulerParams({ ...DEFAULT_SCHEDULER_PARAMS, hedgeFactor: 0.5 }),
    (e: unknown) => e instanceof TopologyParamsError && e.field === 'hedgeFactor' && e.name === 'TopologyParamsError')
})
