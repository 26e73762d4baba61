// The simulator's lazy advert summary agrees with the daemon's summarize + holdProbability.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { holdProbability, summarize } from '../../src/p2p/advert.js'
import { Rng } from './rng.js'
import { SummaryModel } from './summary.js'
import { loadTrace } from './trace.js'

const root = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..')
const trace = loadTrace(join(root, 'test/fixtures/debian12-boot.reads.csv'))

test('summary levels at any time equal summarize() of the presence then', { timeout: 30_000 }, () => {
  const model = new SummaryModel(trace)
  const rng = new Rng(3)
  for (let round = 0; round < 20; round++) {
    // arrival times in 0..1000 ms, some blocks never; look at a random moment
    const arrival = new Float32Array(trace.blockCount)
    for (let b = 0; b < arrival.length; b++) arrival[b] = rng.next() < 0.2 ? Infinity : rng.next() * 1000
    const atMs = rng.next() * 1200
    const bitmap = new Uint8Array(Math.ceil(model.totalBlocks / 8))
    let held = 0
    trace.imageBlocks.forEach((ib, id) => { if (arrival[id] <= atMs) { bitmap[ib >> 3] |= 1 << (ib & 7); held++ } })
    const advert = { summary: summarize(bitmap, model.totalBlocks), heldBlocks: held, totalBlocks: model.totalBlocks }
    for (let b = 0; b < trace.blockCount; b++) {
      assert.equal(model.holdProbability(arrival, 0, b, atMs, false), holdProbability(advert, trace.imageBlocks[b]), `block ${b} at ${atMs}`)
    }
  }
  // a complete agent (a seed) holds every block
  assert.equal(model.holdProbability(new Float32Array(trace.blockCount).fill(Infinity), 0, 0, 0, true), 1)
})

test('group counters kept from arrivals give the same levels as counting the arrival times', { timeout: 30_000 }, () => {
  const counted = new SummaryModel(trace)
  const tracked = new SummaryModel(trace)
  const rng = new Rng(5)
  const nodes = 3
  const arrival = new Float32Array(nodes * trace.blockCount).fill(Infinity)
  for (let n = 0; n < nodes; n++) tracked.track(n)
  // blocks arrive in time order (as deliveries do), the levels are asked of adverts published along the way
  const order = Array.from({ length: nodes * trace.blockCount }, (_, i) => i).filter(() => rng.next() < 0.8)
  for (let i = order.length - 1; i > 0; i--) { const j = rng.int(i + 1); [order[i], order[j]] = [order[j], order[i]] }
  let nowMs = 0
  const published: number[] = [0]
  for (const i of order) {
    nowMs += rng.next() * 2
    arrival[i] = nowMs
    tracked.arrived(Math.floor(i / trace.blockCount), i % trace.blockCount, nowMs)
    if (rng.next() < 0.02) published.push(nowMs)
    if (rng.next() < 0.05) {
      const atMs = published[rng.int(published.length)]
      const n = rng.int(nodes)
      const b = rng.int(trace.blockCount)
      const base = n * trace.blockCount
      assert.equal(tracked.level(arrival, base, b, atMs), counted.level(arrival, base, b, atMs), `node ${n} block ${b} at ${atMs}`)
    }
  }
})
