import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import {
  createRecorder, encodeProfile, decodeProfile, profileToJson, profileFromJson, parseProfileFile, formatProfileJson,
  finalizeProfile, checkProfileFits, parseReadTrace, MAX_PROFILE_BYTES, type BootProfile
} from '../../src/prefetch/index.js'

const TRACE = parseReadTrace(readFileSync(new URL('../fixtures/debian12-boot.reads.csv', import.meta.url), 'utf8'))
const IMAGE_BYTES = 1024 * 1024 * 1024
const ROOT = 'ab'.repeat(32)

function record (blockSizeBytes: number, reads = TRACE): BootProfile {
  const rec = createRecorder({ imageId: 'debian12', rootHex: ROOT, blockSizeBytes, blockCount: IMAGE_BYTES / blockSizeBytes, instanceStartMs: 1000 })
  for (const r of reads) rec.noteRead(1000 + r.tMs, r.offset, r.length)
  return rec.toProfile()
}

test('the recorder learns the first-touch order of the boot trace', { timeout: 10_000 }, () => {
  assert.equal(TRACE.length, 1006)
  const p = record(4096)
  // Expected order, computed from the trace directly: each block at the time of the first read covering it.
  const firstTouch = new Map<number, number>()
  for (const r of TRACE) {
    for (let b = Math.floor(r.offset / 4096); b <= Math.floor((r.offset + r.length - 1) / 4096); b++) {
      if (!firstTouch.has(b)) firstTouch.set(b, Math.round(r.tMs))
    }
  }
  assert.deepEqual(p.entries.map(e => e.block), [...firstTouch.keys()])
  assert.deepEqual(p.entries.map(e => e.tMs), [...firstTouch.values()])
  // The trace README: 40.7 MiB distinct.
  assert.equal((p.entries.length * 4096 / 2 ** 20).toFixed(1), '40.7')
  assert.equal(p.entries[0].block, 0)
  assert.equal(p.entries[0].tMs, 51)
  assert.ok(p.entries.every(e => e.confidence === 1))
  assert.equal(p.boots, 1)
  for (let i = 1; i < p.entries.length; i++) assert.ok(p.entries[i].tMs >= p.entries[i - 1].tMs)
})

test('the recorder is bounded: one entry per block, window, range, junk', { timeout: 10_000 }, () => {
  const rec = createRecorder({ imageId: 'img', rootHex: ROOT, blockSizeBytes: 4096, blockCount: 10, instanceStartMs: 0, recordWindowMs: 1000 })
  assert.equal(rec.noteRead(5, 0, 3 * 4096), 3)
  assert.equal(rec.noteRead(6, 4096, 4096), 0) // already touched
  assert.equal(rec.noteRead(7, 8 * 4096, 100 * 4096), 2) // clipped at the image end
  assert.equal(rec.noteRead(8, 10 * 4096, 4096), 0) // past the end
  assert.equal(rec.noteRead(9, -1, 4096), 0)
  assert.equal(rec.noteRead(NaN, 0, 4096), 0)
  assert.equal(rec.noteRead(2000, 5 * 4096, 4096), 0) // after the window
  assert.equal(rec.noteRead(10, 5 * 4096, 4096), 0) // the window is over for good
  assert.equal(rec.touchedBlocks, 5)
  assert.equal(rec.ignoredReads, 5)
  assert.equal(rec.full, true)
  const full = createRecorder({ imageId: 'img', rootHex: ROOT, blockSizeBytes: 4096, blockCount: 4, instanceStartMs: 0 })
  full.noteRead(1, 0, 1 << 20)
  assert.equal(full.touchedBlocks, 4)
  assert.deepEqual(full.toProfile().entries.map(e => e.block), [0, 1, 2, 3])
})

test('the binary codec round-trips the trace profile in a few KB', { timeout: 10_000 }, () => {
  for (const bs of [4096, 65536]) {
    const p = record(bs)
    const bytes = encodeProfile(p)
    const back = decodeProfile(bytes, { expect: { rootHex: ROOT, blockSizeBytes: bs, blockCount: IMAGE_BYTES / bs } })
    assert.deepEqual(back, p)
    assert.ok(bytes.length < 8 * 1024, `${bs}: ${bytes.length} bytes`)
    console.log(`# trace profile at ${bs} B blocks: ${p.entries.length} entries, ${bytes.length} bytes binary, ${formatProfileJson(p).length} bytes JSON`)
  }
})

test('the version is a content hash: same content same version, other content other version', { timeout: 10_000 }, () => {
  const a = record(65536)
  const b = record(65536)
  assert.equal(a.version, b.version)
  assert.match(a.version, /^[0-9a-f]{16}$/)
  const c = record(65536, TRACE.slice(0, 500))
  assert.notEqual(a.version, c.version)
})

test('JSON export/import round-trips and accepts either form from a file', { timeout: 10_000 }, () => {
  const p = record(65536)
  const text = formatProfileJson(p)
  const back = profileFromJson(JSON.parse(text))
  assert.deepEqual(back, p)
  assert.deepEqual(parseProfileFile(new TextEncoder().encode(text)), p)
  assert.deepEqual(parseProfileFile(encodeProfile(p)), p)
  // An operator's hand-made profile: confidences and times are normalized, the version recomputed.
  const hand = profileFromJson({ ...profileToJson(p), version: 'whatever', entries: [[5, 10.4, 0.5], [3, 20, 1]] })
  assert.deepEqual(hand.entries, [{ block: 5, tMs: 10, confidence: 128 / 255 }, { block: 3, tMs: 20, confidence: 1 }])
  assert.notEqual(hand.version, 'whatever')
})

function expectDecodeError (fn: () => unknown, pattern?: RegExp): void {
  assert.throws(fn, (err: Error) => {
    assert.equal(err.name, 'ProfileDecodeError', `${err.name}: ${err.message}`)
    if (pattern !== undefined) assert.match(err.message, pattern)
    return true
  })
}

test('decoding rejects garbage with ProfileDecodeError and never anything else', { timeout: 20_000 }, () => {
  const p = record(65536)
  const good = encodeProfile(p)
  expectDecodeError(() => decodeProfile(new Uint8Array(0)), /truncated/)
  expectDecodeError(() => decodeProfile(new TextEncoder().encode('hello world')), /magic/)
  expectDecodeError(() => decodeProfile(new Uint8Array(MAX_PROFILE_BYTES + 1)), /too large/)
  expectDecodeError(() => decodeProfile(good, { maxBytes: 100 }), /too large/)
  expectDecodeError(() => decodeProfile(good, { maxEntries: 10 }), /entryCount out of range/)
  expectDecodeError(() => decodeProfile(good.subarray(0, good.length - 1)), /truncated/)
  expectDecodeError(() => decodeProfile(Uint8Array.from([...good, 0])), /trailing/)
  const wrongFormat = good.slice(); wrongFormat[4] = 2
  expectDecodeError(() => decodeProfile(wrongFormat), /format/)

  // Hand-built hostile headers: huge counts, blocks out of range, duplicates.
  const header = (blockCount: number, entryCount: number, runCount: number): number[] => {
    const id = [...new TextEncoder().encode('img')]
    const root = [...new TextEncoder().encode('abcd')]
    const v = (n: number): number[] => { const o: number[] = []; while (n >= 0x80) { o.push((n % 0x80) | 0x80); n = Math.floor(n / 0x80) } o.push(n); return o }
    return [...new TextEncoder().encode('VTPF'), 1, id.length, ...id, root.length, ...root, ...v(4096), ...v(blockCount), 1, ...v(entryCount), ...v(runCount)]
  }
  // A run claiming 2^30 entries in 8 bytes: refused by the entry bound, nothing allocated.
  expectDecodeError(() => decodeProfile(Uint8Array.from([...header(16, 1 << 30, 1), 0, 0x80, 0x80, 0x80, 0x04, 0, 255])), /entryCount/)
  expectDecodeError(() => decodeProfile(Uint8Array.from([...header(16, 2, 1), 32, 1, 0, 255])), /run start/) // block 16 of 16
  expectDecodeError(() => decodeProfile(Uint8Array.from([...header(16, 2, 2), 2, 0, 0, 255, 1, 0, 0, 255])), /twice/) // block 1 twice (delta -1)
  expectDecodeError(() => decodeProfile(Uint8Array.from([...header(16, 1, 1), 0, 0, 0, 0])), /zero confidence/)
  expectDecodeError(() => decodeProfile(Uint8Array.from([...header(16, 1, 1), 0, 0, 1, 255])), /time/) // time -1
  expectDecodeError(() => decodeProfile(Uint8Array.from([...header(16, 2, 1), 0, 0, 0, 255])), /header says/)
  expectDecodeError(() => decodeProfile(Uint8Array.from([...header(16, 1, 1), 0, 0x80, 0x00, 0, 255])), /non-canonical/)
  assert.deepEqual(decodeProfile(Uint8Array.from([...header(16, 2, 1), 4, 1, 20, 255])).entries,
    [{ block: 2, tMs: 10, confidence: 1 }, { block: 3, tMs: 10, confidence: 1 }])

  // Random corruption: every mutant either decodes to a profile that passes every bound, or is refused.
  let seed = 12345
  const rand = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n }
  let refused = 0
  for (let i = 0; i < 3000; i++) {
    const m = good.slice(0, i % 3 === 0 ? rand(good.length) : good.length)
    for (let k = 0; k < 1 + rand(4); k++) if (m.length > 0) m[rand(m.length)] = rand(256)
    try {
      const q = decodeProfile(m)
      assert.ok(q.entries.length <= q.blockCount)
      assert.equal(new Set(q.entries.map(e => e.block)).size, q.entries.length)
      assert.deepEqual(decodeProfile(encodeProfile(q)), q)
    } catch (err) {
      assert.equal((err as Error).name, 'ProfileDecodeError', (err as Error).stack)
      refused++
    }
  }
  assert.ok(refused > 1000)
  for (let i = 0; i < 500; i++) {
    const junk = Uint8Array.from({ length: rand(200) }, () => rand(256))
    if (i % 2 === 0) junk.set(new TextEncoder().encode('VTPF\u0001').subarray(0, Math.min(5, junk.length)))
    try { decodeProfile(junk) } catch (err) { assert.equal((err as Error).name, 'ProfileDecodeError') }
  }
})

test('JSON import rejects malformed profiles with ProfileDecodeError', { timeout: 10_000 }, () => {
  const j = profileToJson(record(65536))
  const bad: unknown[] = [
    null, [], 'x', { ...j, format: 'other' }, { ...j, formatVersion: 2 }, { ...j, blockSizeBytes: 1000 },
    { ...j, blockCount: -1 }, { ...j, boots: 0 }, { ...j, boots: 1000 }, { ...j, imageId: '../etc' },
    { ...j, rootHex: 'XYZ' }, { ...j, entries: 'no' }, { ...j, entries: [[1, 2]] }, { ...j, entries: [[1, 2, 0]] },
    { ...j, entries: [[1, 2, 1.5]] }, { ...j, entries: [[1, -2, 1]] }, { ...j, entries: [[1, 2, 1], [1, 3, 1]] },
    { ...j, entries: [[16384, 2, 1]] }, { ...j, entries: [[1.5, 2, 1]] }, { ...j, entries: [[1, 2, 1e400]] }
  ]
  for (const b of bad) expectDecodeError(() => profileFromJson(b))
  expectDecodeError(() => parseProfileFile(new TextEncoder().encode('{"format":')), /neither/)
})

test('a profile is checked against the image it is for', { timeout: 10_000 }, () => {
  const p = record(65536)
  checkProfileFits(p, { rootHex: ROOT, blockSizeBytes: 65536, blockCount: 16384 })
  const mismatch = (target: { rootHex: string, blockSizeBytes: number, blockCount: number }): void => {
    assert.throws(() => checkProfileFits(p, target), { name: 'ProfileMismatchError' })
    assert.throws(() => decodeProfile(encodeProfile(p), { expect: target }), { name: 'ProfileMismatchError' })
  }
  mismatch({ rootHex: 'cd'.repeat(32), blockSizeBytes: 65536, blockCount: 16384 })
  mismatch({ rootHex: ROOT, blockSizeBytes: 4096, blockCount: 16384 })
  mismatch({ rootHex: ROOT, blockSizeBytes: 65536, blockCount: 16383 })
  // finalizeProfile refuses what the wire form could not carry.
  expectDecodeError(() => finalizeProfile({ ...p, entries: [{ block: 16384, tMs: 0, confidence: 1 }] }))
})
