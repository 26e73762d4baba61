// The NBD server's building blocks: byte queue, option codecs, buffer pool, file export.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { ByteQueue } from '../../src/blockstack/nbd/byte-queue.js'
import { decodeInfoRequest, encodeExportNameReply, readU64, writeU64 } from '../../src/blockstack/nbd/codec.js'
import { BufferPool, BufferPoolDoubleReleaseError } from '../../src/blockstack/nbd/buffer-pool.js'
import { openFileExport, ShortFileReadError } from '../../src/blockstack/nbd/file-export.js'
import { resolveExport } from '../../src/blockstack/nbd/handshake.js'
import { staticExportProvider } from '../../src/blockstack/nbd/index.js'
import { memoryExport, patternBytes, withTempDir } from './nbd-helpers.js'

const T = { timeout: 10_000 }

test('ByteQueue parses across chunk boundaries and skips partial chunks', T, () => {
  const q = new ByteQueue()
  const all = patternBytes(0, 100)
  q.push(all.subarray(0, 3))
  q.push(all.subarray(3, 10))
  q.push(Buffer.alloc(0))
  q.push(all.subarray(10, 100))
  assert.equal(q.length, 100)
  const { buf, offset } = q.contiguous(8)
  assert.ok(buf.subarray(offset, offset + 8).equals(all.subarray(0, 8)))
  assert.equal(q.length, 100, 'contiguous does not consume')
  assert.ok(q.take(5).equals(all.subarray(0, 5)))
  assert.equal(q.skip(20), 20)
  assert.ok(q.take(10).equals(all.subarray(25, 35)))
  assert.equal(q.skip(1000), 65)
  assert.equal(q.length, 0)
  assert.throws(() => q.contiguous(1), RangeError)
  q.push(all.subarray(0, 4))
  q.push(all.subarray(4, 6))
  const rest = Buffer.concat(q.drain())
  assert.ok(rest.equals(all.subarray(0, 6)))
})

test('64-bit fields round-trip through two 32-bit halves', T, () => {
  const buf = Buffer.alloc(8)
  for (const v of [0, 1, 2 ** 32 - 1, 2 ** 32, 1073741824 * 1024 + 12345, Number.MAX_SAFE_INTEGER]) {
    writeU64(buf, 0, v)
    assert.equal(buf.readBigUInt64BE(0), BigInt(v))
    assert.equal(readU64(buf, 0), v)
  }
  buf.writeBigUInt64BE(2n ** 64n - 1n)
  assert.ok(readU64(buf, 0) >= 2 ** 64 - 2 ** 12, 'huge offsets stay huge')
})

test('info requests decode and malformed ones are rejected', T, () => {
  const ok = Buffer.from([0, 0, 0, 2, 0x61, 0x62, 0, 2, 0, 1, 0, 3])
  assert.deepEqual(decodeInfoRequest(ok), { name: 'ab', infoTypes: [1, 3] })
  assert.deepEqual(decodeInfoRequest(Buffer.from([0, 0, 0, 0, 0, 0])), { name: '', infoTypes: [] })
  assert.equal(decodeInfoRequest(Buffer.from([0, 0, 0, 0, 0])), null, 'too short')
  assert.equal(decodeInfoRequest(Buffer.from([0, 0, 0, 9, 0, 0])), null, 'name past the end')
  assert.equal(decodeInfoRequest(Buffer.from([0, 0, 0, 0, 0, 2, 0, 1])), null, 'count past the end')
  assert.equal(decodeInfoRequest(Buffer.from([0, 0, 0, 0, 0, 0, 9])), null, 'trailing bytes')
  assert.equal(encodeExportNameReply(5, 3, true).length, 10)
  assert.equal(encodeExportNameReply(5, 3, false).length, 134)
})

test('the empty export name resolves only when there is exactly one export', T, () => {
  const one = staticExportProvider([memoryExport('x', Buffer.alloc(1))])
  assert.equal(resolveExport(one, '')?.name, 'x')
  assert.equal(resolveExport(one, 'y'), undefined)
  const two = staticExportProvider([memoryExport('x', Buffer.alloc(1)), memoryExport('y', Buffer.alloc(1))])
  assert.equal(resolveExport(two, ''), undefined)
  const named = staticExportProvider([memoryExport('', Buffer.alloc(1)), memoryExport('y', Buffer.alloc(1))])
  assert.equal(resolveExport(named, '')?.name, '', 'an export really named "" wins')
})

test('BufferPool reuses released buffers, bounds what it keeps, catches double release', T, () => {
  const pool = new BufferPool(16384)
  const a = pool.acquire(5000)
  assert.equal(a.length, 5000)
  assert.equal(a.buffer.byteLength, 8192)
  pool.release(a)
  assert.equal(pool.pooled, 8192)
  assert.throws(() => { pool.release(a) }, BufferPoolDoubleReleaseError)
  const b = pool.acquire(6000)
  assert.equal(b.buffer, a.buffer, 'same allocation reused')
  assert.equal(pool.pooled, 0)
  const c = pool.acquire(8192)
  const d = pool.acquire(8192)
  const e = pool.acquire(8192)
  for (const x of [b, c, d, e]) pool.release(x)
  assert.equal(pool.pooled, 16384, 'bounded by maxPooledBytes')
  pool.release(Buffer.alloc(10)) // not ours: ignored
  assert.equal(pool.acquire(1).length, 1)
})

test('file export reads exact ranges (thread pool and sync paths) and fails past the end', T, async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, 'img')
    const data = patternBytes(0, 300_000)
    await writeFile(path, data)
    for (const syncReadMaxBytes of [0, 65536]) {
      const exp = await openFileExport(path, { name: 'img', syncReadMaxBytes })
      try {
        assert.equal(exp.sizeBytes, data.length)
        const signal = new AbortController().signal
        for (const [off, len] of [[0, 1], [4095, 4097], [100_000, 65536], [200_000, 100_000]]) {
          const got = await exp.read(off, len, signal)
          assert.ok(Buffer.from(got).equals(data.subarray(off, off + len)), `${off}+${len}`)
          exp.releaseBuffer?.(got)
        }
        await assert.rejects(exp.read(299_000, 2000, signal), ShortFileReadError)
        const ac = new AbortController()
        ac.abort(new Error('stop'))
        await assert.rejects(exp.read(0, 10, ac.signal), /stop/)
      } finally {
        await exp.close()
      }
    }
  })
})
