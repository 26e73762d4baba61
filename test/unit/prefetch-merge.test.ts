import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import {
  createRecorder, mergeProfiles, weightedMedian, parseReadTrace, encodeProfile, decodeProfile, finalizeProfile,
  MAX_PROFILE_BOOTS, type BootProfile, type TraceRead
} from '../../src/prefetch/index.js'

const TRACE = parseReadTrace(readFileSync(new URL('../fixtures/debian12-boot.reads.csv', import.meta.url), 'utf8'))
const BS = 65536
const BLOCKS = (1 << 30) / BS
const ROOT = 'ab'.repeat(32)

function record (reads: readonly TraceRead[], rootHex = ROOT): BootProfile {
  const rec = createRecorder({ imageId: 'debian12', rootHex, blockSizeBytes: BS, blockCount: BLOCKS, instanceStartMs: 0 })
  for (const r of [...reads].sort((a, b) => a.tMs - b.tMs)) rec.noteRead(r.tMs, r.offset, r.length)
  return rec.toProfile()
}

function prng (seed: number): () => number {
  return () => { seed = (seed + 0x6d2b79f5) | 0; let t = Math.imul(seed ^ (seed >>> 15), 1 | seed); t ^= t + Math.imul(t ^ (t >>> 7), 61 | t); return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32 }
}

/** Another boot of the same image: slower or faster overall, jittered, some reads missing, and (outlier) one stretch delayed a lot. */
function perturbedBoot (seed: number, opts: { dropShare: number, outlier: boolean }): TraceRead[] {
  const rand = prng(seed)
  const scale = 0.8 + rand() * 0.5
  const out: TraceRead[] = []
  const outlierStart = Math.floor(TRACE.length * 0.2)
  TRACE.forEach((r, i) => {
    if (i > 0 && rand() < opts.dropShare) return
    let tMs = r.tMs * scale + (rand() - 0.5) * 400
    if (opts.outlier && i >= outlierStart && i < outlierStart + 40) tMs += 30_000 // a service started late on this boot
    out.push({ ...r, tMs: Math.max(0, tMs) })
  })
  return out
}

/** Mean distance between a block's position in `p` and in `truth` (Spearman's footrule, over blocks in both). */
function positionError (p: BootProfile, truth: BootProfile): number {
  const truthPos = new Map(truth.entries.map((e, i) => [e.block, i]))
  let sum = 0
  let n = 0
  p.entries.forEach((e, i) => {
    const t = truthPos.get(e.block)
    if (t !== undefined) { sum += Math.abs(i - t); n++ }
  })
  return sum / n
}

test('weighted median', { timeout: 5_000 }, () => {
  assert.equal(weightedMedian([5], [3]), 5)
  assert.equal(weightedMedian([10, 20], [1, 1]), 15)
  assert.equal(weightedMedian([10, 20], [2, 1]), 10)
  assert.equal(weightedMedian([30, 10, 20], [1, 1, 1]), 20)
  assert.equal(weightedMedian([1, 1000, 2, 3], [1, 1, 1, 1]), 2.5)
})

test('merging perturbed boots gives the true order back, with confidence = share of boots', { timeout: 20_000 }, () => {
  const truth = record(TRACE)
  const bootReads = [0, 1, 2, 3, 4].map(k => perturbedBoot(100 + k, { dropShare: 0.1, outlier: k === 0 }))
  const boots = bootReads.map(r => record(r))
  const merged = mergeProfiles(boots[0], ...boots.slice(1))
  assert.equal(merged.boots, 5)

  // Confidence: exactly the share of boots whose reads touched the block.
  const touchedBy = new Map<number, number>()
  for (const b of boots) for (const e of b.entries) touchedBy.set(e.block, (touchedBy.get(e.block) ?? 0) + 1)
  assert.equal(merged.entries.length, touchedBy.size)
  for (const e of merged.entries) assert.equal(e.confidence, Math.round(touchedBy.get(e.block)! / 5 * 255) / 255, `block ${e.block}`)
  const shares = new Set(merged.entries.map(e => e.confidence))
  assert.ok(shares.has(1) && [...shares].some(c => c < 1), 'some blocks in every boot, some not')

  // Order: better than any single perturbed boot, and very close to the true order.
  const errMerged = positionError(merged, truth)
  const errBoots = boots.map(b => positionError(b, truth))
  console.log(`# mean position error vs the true boot (of ${truth.entries.length}): merged ${errMerged.toFixed(1)}, single boots ${errBoots.map(a => a.toFixed(1)).join(' ')}`)
  assert.ok(errMerged < Math.min(...errBoots), `${errMerged} vs ${errBoots}`)
  assert.ok(errMerged < 0.02 * truth.entries.length)

  // The outlier boot's late stretch stays where the other boots put it.
  const outlierBlocks = truth.entries.filter(e => e.tMs > TRACE[Math.floor(TRACE.length * 0.2)].tMs).slice(0, 20).map(e => e.block)
  const mergedPos = new Map(merged.entries.map((e, i) => [e.block, i]))
  const truthPos = new Map(truth.entries.map((e, i) => [e.block, i]))
  for (const b of outlierBlocks) assert.ok(Math.abs(mergedPos.get(b)! - truthPos.get(b)!) < 60, `block ${b}: ${mergedPos.get(b)} vs ${truthPos.get(b)}`)

  // Deterministic and independent of the order of the inputs.
  const again = mergeProfiles(boots[3], boots[1], boots[4], boots[0], boots[2])
  assert.equal(again.version, merged.version)
  assert.deepEqual(again.entries, merged.entries)
  // Merged profiles round-trip through the codec.
  assert.deepEqual(decodeProfile(encodeProfile(merged)), merged)
})

test('incremental merge (profile + new recording) keeps exact confidences', { timeout: 20_000 }, () => {
  const boots = [0, 1, 2, 3].map(k => record(perturbedBoot(200 + k, { dropShare: 0.2, outlier: false })))
  let running = boots[0]
  for (const b of boots.slice(1)) running = mergeProfiles(running, b)
  const once = mergeProfiles(boots[0], ...boots.slice(1))
  assert.equal(running.boots, 4)
  const conf = (p: BootProfile): Map<number, number> => new Map(p.entries.map(e => [e.block, e.confidence]))
  assert.deepEqual(conf(running), conf(once))
  const truth = record(TRACE)
  assert.ok(positionError(running, truth) < Math.max(...boots.map(b => positionError(b, truth))))
})

test('boots saturate, merge refuses other images', { timeout: 20_000 }, () => {
  const a = finalizeProfile({ imageId: 'img', rootHex: ROOT, blockSizeBytes: BS, blockCount: 8, boots: 1, entries: [{ block: 1, tMs: 5, confidence: 1 }] })
  const b = finalizeProfile({ ...a, entries: [{ block: 2, tMs: 3, confidence: 1 }] })
  let p = a
  for (let i = 0; i < 150; i++) p = mergeProfiles(p, i % 2 === 0 ? a : b)
  assert.equal(p.boots, MAX_PROFILE_BOOTS)
  assert.ok(p.entries.every(e => e.confidence > 0.3 && e.confidence < 0.7), JSON.stringify(p.entries))
  const other = finalizeProfile({ ...a, rootHex: 'cd'.repeat(32) })
  assert.throws(() => mergeProfiles(a, other), { name: 'ProfileMismatchError' })
  assert.throws(() => mergeProfiles(a, finalizeProfile({ ...a, blockCount: 9 })), { name: 'ProfileMismatchError' })
  // Two single boots: mean time; block 2 (t=3) before block 1 (t=5).
  assert.deepEqual(mergeProfiles(a, b).entries.map(e => [e.block, e.tMs, e.confidence]), [[2, 3, 128 / 255], [1, 5, 128 / 255]])
})
