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
