import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import {
  createRecorder, finalizeProfile, indexProfile, newReadAhead, observeRead, planReadAhead, planIdle, planSequential, readAheadParams, sequentialParams,
  parseReadTrace, IDLE_START, type BootProfile, type IdleCursor, type ReadAheadState, type TraceRead
} from '../../src/prefetch/index.js'

const TRACE = parseReadTrace(readFileSync(new URL('../fixtures/debian12-boot.reads.csv', import.meta.url), 'utf8'))
const BS = 65536
const BLOCKS = (1 << 30) / BS
const ROOT = 'ab'.repeat(32)

function record (reads: readonly TraceRead[]): BootProfile {
  const rec = createRecorder({ imageId: 'debian12', rootHex: ROOT, blockSizeBytes: BS, blockCount: BLOCKS, instanceStartMs: 0 })
  for (const r of [...reads].sort((a, b) => a.tMs - b.tMs)) rec.noteRead(r.tMs, r.offset, r.length)
  return rec.toProfile()
}

class Bits {
  readonly bits: Uint8Array
  constructor (n: number) { this.bits = new Uint8Array(Math.ceil(n / 8)) }
  has = (b: number): boolean => (this.bits[b >> 3] & (1 << (b & 7))) !== 0
  set (b: number): void { this.bits[b >> 3] |= 1 << (b & 7) }
}

const small = (blocks: number[], confidence: number[] = blocks.map(() => 1)): BootProfile => finalizeProfile({
  imageId: 'img', rootHex: ROOT, blockSizeBytes: 4096, blockCount: 64, boots: 4,
  entries: blocks.map((block, i) => ({ block, tMs: i * 10, confidence: confidence[i] }))
})

test('read-ahead starts at the profile head and follows the VM position', { timeout: 10_000 }, () => {
  const profile = small([10, 11, 12, 40, 41, 3, 4, 5, 50, 51, 52, 53, 20, 21])
  const index = indexProfile(profile)
  const params = readAheadParams(4096, { initialWindowBlocks: 3, maxWindowBlocks: 12 })
  const have = new Bits(64)
  let s = newReadAhead('vm1', params)
  // Nothing read yet: the head of the profile.
  assert.deepEqual(planReadAhead(index, [s], have, params, 100), [10, 11, 12])
  // The VM reads block 40 (position 3): the next 3 missing after it; present ones are skipped.
  have.set(3)
  s = observeRead(index, s, { firstBlock: 40, lastBlock: 40, hit: false }, params)
  assert.equal(s.position, 3)
  assert.deepEqual(planReadAhead(index, [s], have, params, 100), [41, 4, 5])
  // In-flight blocks are not planned again.
  assert.deepEqual(planReadAhead(index, [s], { has: have.has, inFlight: b => b === 41 }, params, 100), [4, 5, 50])
  // A read spanning several blocks counts at its furthest profile position.
  s = observeRead(index, s, { firstBlock: 3, lastBlock: 5, hit: false }, params)
  assert.equal(s.position, 7)
  assert.deepEqual(planReadAhead(index, [s], have, params, 100), [50, 51, 52])
  // An off-profile read says nothing about the position.
  s = observeRead(index, s, { firstBlock: 60, lastBlock: 60, hit: false }, params)
  assert.equal(s.position, 7)
  // Jumping back (VMs read in parallel) moves the window back too.
  s = observeRead(index, s, { firstBlock: 11, lastBlock: 11, hit: false }, params)
  assert.deepEqual(planReadAhead(index, [s], have, params, 100), [12, 40, 41])
  // Bounded by maxBlocks.
  assert.deepEqual(planReadAhead(index, [s], have, params, 2), [12, 40])
})

test('the window doubles on hits up to the max and halves on misses', { timeout: 10_000 }, () => {
  const profile = small(Array.from({ length: 60 }, (_, i) => i))
  const index = indexProfile(profile)
  const params = readAheadParams(4096, { initialWindowBlocks: 2, maxWindowBlocks: 16 })
  let s = newReadAhead('vm', params)
  const windows: number[] = []
  for (let b = 0; b < 6; b++) {
    s = observeRead(index, s, { firstBlock: b, lastBlock: b, hit: true }, params)
    windows.push(s.windowBlocks)
  }
  assert.deepEqual(windows, [4, 8, 16, 16, 16, 16])
  assert.equal(planReadAhead(index, [s], { has: () => false }, params, 100).length, 16)
  s = observeRead(index, s, { firstBlock: 7, lastBlock: 7, hit: false }, params)
  assert.equal(s.windowBlocks, 8)
  for (let i = 0; i < 5; i++) s = observeRead(index, s, { firstBlock: 8, lastBlock: 8, hit: false }, params)
  assert.equal(s.windowBlocks, 2)
  assert.equal(s.reads, 12)
  assert.equal(s.hits, 6)
})

test('read-ahead for several instances interleaves nearest-first and skips low confidence', { timeout: 10_000 }, () => {
  const profile = small([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 1, 1, 0.1, 1, 1, 1, 1, 1, 1])
  const index = indexProfile(profile)
  const params = readAheadParams(4096, { initialWindowBlocks: 3, maxWindowBlocks: 3, minConfidence: 0.2 })
  const a: ReadAheadState = { ...newReadAhead('a', params), position: 0 }
  const b: ReadAheadState = { ...newReadAhead('b', params), position: 5 }
  // a: 1, 2, (3 skipped: confidence 0.1) 4; b: 6, 7, 8. Round robin: 1 6 2 7 4 8.
  assert.deepEqual(planReadAhead(index, [b, a], { has: () => false }, params, 100), [1, 6, 2, 7, 4, 8])
  // Overlapping windows are not fetched twice.
  const c: ReadAheadState = { ...newReadAhead('c', params), position: 1 }
  assert.deepEqual(planReadAhead(index, [a, c], { has: () => false }, params, 100), [1, 2, 4, 5])
})

test('read-ahead scans a bounded stretch of the profile per call', { timeout: 10_000 }, () => {
  const profile = small(Array.from({ length: 64 }, (_, i) => i))
  const index = indexProfile(profile)
  const params = { ...readAheadParams(4096, { initialWindowBlocks: 4, maxWindowBlocks: 4 }), maxScan: 10 }
  let calls = 0
  const has = (b: number): boolean => { calls++; return b < 30 }
  assert.deepEqual(planReadAhead(index, [newReadAhead('x', params)], { has }, params, 100), [])
  assert.equal(calls, 10)
})

test('idle prefetch: rest of the profile, then the image in ascending order, then done', { timeout: 10_000 }, () => {
  const profile = small([40, 41, 7, 8, 60])
  const index = indexProfile(profile)
  const have = new Bits(64)
  for (const b of [41, 8, 0, 1, 2]) have.set(b)
  const zero = new Set([4, 5]) // zero blocks: present as holes
  const filter = { has: (b: number) => have.has(b) || zero.has(b) }
  const fetched: number[] = []
  let cursor: IdleCursor = IDLE_START
  const phases: string[] = []
  for (let i = 0; i < 100 && cursor.phase !== 'done'; i++) {
    const plan = planIdle(index, 64, cursor, filter, 4)
    assert.ok(plan.blocks.length <= 4)
    for (const b of plan.blocks) { have.set(b); fetched.push(b) }
    cursor = plan.cursor
    phases.push(cursor.phase)
  }
  const expectedTail = Array.from({ length: 64 }, (_, i) => i).filter(b => ![41, 8, 0, 1, 2, 4, 5, 40, 7, 60].includes(b))
  assert.deepEqual(fetched, [40, 7, 60, ...expectedTail])
  assert.equal(cursor.phase, 'done')
  assert.equal(new Set(fetched).size, fetched.length)
})

test('idle prefetch does not finish while blocks are in flight, and picks up failed ones after a wrap', { timeout: 10_000 }, () => {
  const have = new Bits(16)
  for (let b = 0; b < 16; b++) if (b !== 3 && b !== 9) have.set(b)
  let inFlight = new Set([3, 9])
  let cursor: IdleCursor = IDLE_START
  for (let i = 0; i < 10; i++) {
    const plan = planIdle(undefined, 16, cursor, { has: have.has, inFlight: b => inFlight.has(b) }, 8, 40)
    assert.deepEqual(plan.blocks, [])
    cursor = plan.cursor
  }
  assert.equal(cursor.phase, 'image')
  inFlight = new Set() // the fetch of 3 and 9 failed: they are missing again
  const plan = planIdle(undefined, 16, cursor, { has: have.has }, 8, 40)
  assert.deepEqual([...plan.blocks].sort((x, y) => x - y), [3, 9])
  // maxScan bounds the work of one call.
  let calls = 0
  const p2 = planIdle(undefined, 1 << 20, IDLE_START, { has: () => { calls++; return true } }, 8, 1000)
  assert.equal(calls, 1000)
  assert.equal(p2.cursor.position, 1000)
})

test('replaying another boot with read-ahead finds most reads local', { timeout: 20_000 }, () => {
  // Profile from the recorded boot; the VM replays a different boot (jittered, 10 % of reads missing).
  const profile = record(TRACE)
  let seed = 7
  const rand = (): number => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed / 2 ** 31 }
  const boot = TRACE.filter(() => rand() > 0.1).map(r => ({ ...r, tMs: Math.max(0, r.tMs * 1.1 + (rand() - 0.5) * 300) }))
    .sort((a, b) => a.tMs - b.tMs)
  // A link moving 0.25 blocks/ms (16 MiB/s at 64 KiB): the boot's 40 MiB over ~48 s fits, but not in a burst.
  const blocksPerMs = 0.25
  const replay = (readAhead: boolean): { localShare: number, prefetched: number } => {
    const index = indexProfile(profile)
    const params = readAheadParams(BS)
    const have = new Bits(BLOCKS)
    let state = newReadAhead('vm', params)
    let budget = 0
    let lastMs = 0
    let local = 0
    let prefetched = 0
    for (const r of boot) {
      budget = Math.min(budget + (r.tMs - lastMs) * blocksPerMs, 64)
      lastMs = r.tMs
      if (readAhead && budget >= 1) {
        const blocks = planReadAhead(index, [state], have, params, Math.floor(budget))
        for (const b of blocks) have.set(b)
        budget -= blocks.length
        prefetched += blocks.length
      }
      const first = Math.floor(r.offset / BS)
      const last = Math.floor((r.offset + r.length - 1) / BS)
      let hit = true
      for (let b = first; b <= last; b++) {
        if (!have.has(b)) { hit = false; have.set(b); budget -= 1 } // on-demand fetch uses the link too
      }
      if (hit) local++
      state = observeRead(index, state, { firstBlock: first, lastBlock: last, hit }, params)
    }
    return { localShare: local / boot.length, prefetched }
  }
  const none = replay(false)
  const ra = replay(true)
  console.log(`# replay of a perturbed boot: local share without prefetch ${none.localShare.toFixed(3)}, with read-ahead ${ra.localShare.toFixed(3)} (${ra.prefetched} blocks prefetched of ${profile.entries.length} in the profile)`)
  assert.ok(none.localShare < 0.6)
  assert.ok(ra.localShare > 0.85, String(ra.localShare))
  assert.ok(ra.prefetched <= profile.entries.length)
})

test('planSequential: the data blocks after each read, holes skipped, bounded by window and scan, round robin', () => {
  const zero = new Set([3, 4, 5, 6, 7, 8, 9])
  const present = new Set([2])
  const filter = { has: (b: number) => zero.has(b) || present.has(b), isZero: (b: number) => zero.has(b), inFlight: (b: number) => b === 21 }
  const params = { windowBlocks: 3, scanBlocks: 12 }
  // After block 1: 2 (present, counts), then holes 3..9 (do not count), 10, 11.
  assert.deepEqual(planSequential([1], 64, filter, params, 100), [10, 11])
  // Two instances: nearest first, alternating; 21 in flight counts but is not planned again.
  assert.deepEqual(planSequential([20, 40], 64, filter, params, 100), [22, 41, 23, 42, 43])
  assert.deepEqual(planSequential([20, 40], 64, filter, params, 3), [22, 41, 23])
  // The end of the image and the scan bound.
  assert.deepEqual(planSequential([62, 70, -1], 64, filter, params, 100), [63])
  assert.deepEqual(planSequential([1], 64, filter, { windowBlocks: 3, scanBlocks: 5 }, 100), [])
  // Defaults: 256 KiB window, 2 MiB scan.
  assert.deepEqual(sequentialParams(65536), { windowBlocks: 4, scanBlocks: 32 })
})
