import { test } from 'node:test'
import { setMaxListeners } from 'node:events'
import assert from 'node:assert/strict'
import { mkdtemp, writeFile, rm, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes, createHash } from 'node:crypto'
import { manifestFromFile, decodeManifest, acceptManifest, verifyBlock, isZeroBlock } from '../../src/blockstack/manifest.js'
import { signingKeyFromSeed } from '../../src/blockstack/signing.js'
import { BlockCache, PendingWriteBudget, nextSyncWriteBackoffMs, SYNC_WRITE_BACKOFF_MS, MAX_SYNC_WRITE_BACKOFF_MS } from '../../src/blockstack/cache.js'
import { memoryPresenceStore } from '../../src/blockstack/presence.js'
import { fileBlockSource } from '../../src/blockstack/file-source.js'
import type { BlockSource } from '../../src/blockstack/types.js'
import { ImageRegistry } from '../../src/blockstack/images.js'
import { BufferPool } from '../../src/blockstack/nbd/buffer-pool.js'
import { Level } from 'level'

const BS = 4096

async function fixture (): Promise<{ dir: string, image: string, bytes: Buffer }> {
  const dir = await mkdtemp(join(tmpdir(), 'vmt-mc-'))
  const bytes = Buffer.concat([randomBytes(BS * 5), Buffer.alloc(BS * 3), randomBytes(1000)]) // last block short
  const image = join(dir, 'img.raw')
  await writeFile(image, bytes)
  return { dir, image, bytes }
}

/**
 * A signed manifest of the fixture and its file source, with setTimeout mocked (the writer's waits) and a settle()
 * for what stays real: let what is due run, then wait for the condition, if any, on a real timer (10 s at most:
 * a loaded machine's fdatasync).
 */
async function mockedWriterFixture (t: { mock: { timers: { enable: (o: { apis: Array<'setTimeout'> }) => void } } }): Promise<{
  dir: string, bytes: Buffer, m: Awaited<ReturnType<typeof manifestFromFile>>, file: ReturnType<typeof fileBlockSource>, settle: (until?: () => boolean) => Promise<void>
}> {
  const { dir, image, bytes } = await fixture()
  const key = signingKeyFromSeed(randomBytes(32))
  const m = await manifestFromFile({ imageId: 'img', path: image, blockSizeBytes: BS, key })
  const file = fileBlockSource(image)
  const realSetTimeout = globalThis.setTimeout
  t.mock.timers.enable({ apis: ['setTimeout'] })
  const settle = async (until?: () => boolean): Promise<void> => {
    for (let i = 0; i < 20; i++) await new Promise(resolve => setImmediate(resolve))
    for (let i = 0; until !== undefined && !until() && i < 2000; i++) await new Promise(resolve => realSetTimeout(resolve, 5))
  }
  return { dir, bytes, m, file, settle }
}

test('manifest: build, encode, decode, verify, trust', { timeout: 10_000 }, async () => {
  const { dir, image, bytes } = await fixture()
  try {
    const key = signingKeyFromSeed(randomBytes(32))
    const m = await manifestFromFile({ imageId: 'img', path: image, blockSizeBytes: BS, key })
    assert.equal(m.blockCount, 9)
    assert.equal(m.sizeBytes, bytes.length)
    assert.ok(isZeroBlock(m, 5) && isZeroBlock(m, 7) && !isZeroBlock(m, 4) && !isZeroBlock(m, 8))
    assert.ok(verifyBlock(m, 8, bytes.subarray(8 * BS)))
    assert.ok(!verifyBlock(m, 8, bytes.subarray(7 * BS, 8 * BS)))
    const again = acceptManifest(m.encoded, [key.publicKey])
    assert.equal(again.rootHex, m.rootHex)
    assert.throws(() => acceptManifest(m.encoded, [signingKeyFromSeed(randomBytes(32)).publicKey]), { name: 'UntrustedOriginError' })
    const tampered = Buffer.from(m.encoded)
    tampered[tampered.length - 100] ^= 1 // a block hash
    assert.throws(() => decodeManifest(tampered), { name: 'ManifestSignatureError' })
    // Trust is checked before the body is hashed: an untrusted origin's manifest is refused as untrusted even
    // when its signature would not verify either.
    assert.throws(() => acceptManifest(tampered, [signingKeyFromSeed(randomBytes(32)).publicKey]), { name: 'UntrustedOriginError' })
    assert.throws(() => acceptManifest(tampered, [key.publicKey]), { name: 'ManifestSignatureError' })
    assert.throws(() => decodeManifest(m.encoded.subarray(0, 50)), { name: 'ManifestDecodeError' })
    assert.throws(() => decodeManifest(randomBytes(300)), { name: 'ManifestDecodeError' })
    await assert.rejects(manifestFromFile({ imageId: '../etc', path: image, blockSizeBytes: BS, key }), { name: 'InvalidImageIdError' })
  } finally { await rm(dir, { recursive: true, force: true }) }
})

test('zero blocks are found wherever they are, a short last one too', { timeout: 10_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vmt-zb-'))
  try {
    const key = signingKeyFromSeed(randomBytes(32))
    const zeros = [true, false, true, true, false, false, true, false, true]
    for (const tail of [BS, 1000]) {
      const parts = zeros.map((zero, i) => { const length = i === zeros.length - 1 ? tail : BS; return zero ? Buffer.alloc(length) : randomBytes(length) })
      const image = join(dir, `img-${tail}.raw`)
      await writeFile(image, Buffer.concat(parts))
      const m = await manifestFromFile({ imageId: 'img', path: image, blockSizeBytes: BS, key })
      assert.deepEqual(zeros.map((_, i) => isZeroBlock(m, i)), zeros, `last block of ${tail} bytes`)
    }
  } finally { await rm(dir, { recursive: true, force: true }) }
})

test('a manifest verified before is known by its root: another body is refused, the signature is not checked again', { timeout: 10_000 }, async () => {
  const { dir, image } = await fixture()
  try {
    const key = signingKeyFromSeed(randomBytes(32))
    const m = await manifestFromFile({ imageId: 'img', path: image, blockSizeBytes: BS, key })
    assert.equal(decodeManifest(m.encoded, { verifiedRootHex: m.rootHex }).rootHex, m.rootHex)
    const hashChanged = Buffer.from(m.encoded)
    hashChanged[hashChanged.length - 100] ^= 1 // a block hash
    assert.throws(() => decodeManifest(hashChanged, { verifiedRootHex: m.rootHex }), { name: 'ManifestSignatureError' })
    // The root covers the whole body, so a manifest another key signed is refused too.
    const other = await manifestFromFile({ imageId: 'img', path: image, blockSizeBytes: BS, key: signingKeyFromSeed(randomBytes(32)) })
    assert.throws(() => decodeManifest(other.encoded, { verifiedRootHex: m.rootHex }), { name: 'ManifestSignatureError' })
    // The signature covers only the root: with the root known, damage to it changes no served byte's check.
    const signatureChanged = Buffer.from(m.encoded)
    signatureChanged[signatureChanged.length - 1] ^= 1
    assert.throws(() => decodeManifest(signatureChanged), { name: 'ManifestSignatureError' })
    assert.deepEqual(decodeManifest(signatureChanged, { verifiedRootHex: m.rootHex }).blockHashes, m.blockHashes)
  } finally { await rm(dir, { recursive: true, force: true }) }
})

test('registry: a restart keeps its images and drops one whose manifest on disk is not the one recorded', { timeout: 20_000 }, async () => {
  const { dir, image } = await fixture()
  const dataDir = join(dir, 'data')
  const key = signingKeyFromSeed(randomBytes(32))
  // The file sources are the caller's to close, as the daemon does at stop (src/daemon/daemon.ts).
  const sources: Array<ReturnType<typeof fileBlockSource>> = []
  const open = async (db: Level<string, any>): Promise<ImageRegistry> =>
    await ImageRegistry.open({ dataDir, db, key, sourceFor: () => { const source = fileBlockSource(image); sources.push(source); return source } })
  let db = new Level<string, any>(join(dataDir, 'meta'), { valueEncoding: 'json' })
  try {
    const first = await open(db)
    const opts = { blockSizeBytes: BS, allowedDirs: [dir] }
    const kept = await first.register('kept', image, opts)
    await first.register('bad', image, opts)
    await first.close()
    await db.close()
    const path = join(dataDir, 'images', 'bad', 'manifest')
    const bytes = await readFile(path)
    bytes[bytes.length - 100] ^= 1 // a block hash
    await writeFile(path, bytes)
    db = new Level<string, any>(join(dataDir, 'meta'), { valueEncoding: 'json' })
    const again = await open(db)
    assert.deepEqual(again.list().map(i => i.record.imageId), ['kept'])
    assert.equal(again.get('kept')?.manifest.rootHex, kept.manifest.rootHex)
    await again.close()
  } finally {
    for (const source of sources) await source.close()
    await db.close()
    await rm(dir, { recursive: true, force: true })
  }
})

test('cache: reads fetch once, verify, persist; corrupt blocks are refused', { timeout: 10_000 }, async () => {
  const { dir, image, bytes } = await fixture()
  try {
    const key = signingKeyFromSeed(randomBytes(32))
    const m = await manifestFromFile({ imageId: 'img', path: image, blockSizeBytes: BS, key })
    const file = fileBlockSource(image)
    const calls: number[][] = []
    let corruptNext = 1
    const reported: number[] = []
    const source: BlockSource = {
      async fetch (manifest, indexes, options) {
        calls.push([...indexes])
        const blocks = await file.fetch(manifest, indexes, options)
        if (corruptNext-- > 0) blocks[0] = { ...blocks[0], data: randomBytes(blocks[0].data.byteLength), peer: 'evil' }
        return blocks
      },
      reportCorrupt (_m, index, peer) { reported.push(index); assert.equal(peer, 'evil') }
    }
    const presence = memoryPresenceStore()
    const cache = await BlockCache.open({ manifest: m, path: join(dir, 'cache'), presence, source })
    const signal = AbortSignal.timeout(5000)
    // Two concurrent reads over the same missing blocks: one fetch per block.
    const [a, b] = await Promise.all([cache.read(100, 3 * BS, signal), cache.read(BS + 7, 2 * BS, signal)])
    assert.deepEqual(Buffer.from(a), bytes.subarray(100, 100 + 3 * BS))
    assert.deepEqual(Buffer.from(b), bytes.subarray(BS + 7, 3 * BS + 7))
    const fetched = calls.flat()
    assert.equal(reported.length, 1)
    // block 0..3 asked once each, plus one refetch of the corrupted one
    assert.equal(fetched.length, 5)
    await cache.flush()
    assert.ok(cache.has(0) && cache.has(3) && !cache.has(4))
    assert.ok(cache.has(5), 'zero blocks are present from the start')
    const whole = await cache.read(0, bytes.length, signal)
    assert.equal(createHash('sha256').update(whole).digest('hex'), createHash('sha256').update(bytes).digest('hex'))
    await cache.close()
    // Reopen: presence is persistent.
    const reopened = await BlockCache.open({ manifest: m, path: join(dir, 'cache'), presence, source: { async fetch () { throw new Error('no fetch expected') } } })
    assert.equal(reopened.presentCount(), m.blockCount)
    assert.deepEqual(Buffer.from(await reopened.readBlock(8)), bytes.subarray(8 * BS))
    // Every block from the file now (blocks 0-4 went down as one run, 8 on its own).
    assert.ok(Buffer.from(await reopened.read(0, bytes.length, signal)).equals(bytes), 'the cache file holds the image')
    await reopened.close()
    await file.close()
    assert.ok((await readFile(join(dir, 'cache'))).length === bytes.length)
  } finally { await rm(dir, { recursive: true, force: true }) }
})

test('cache: a slow write on the event loop sends writes to the thread pool; the file holds every block either way', { timeout: 10_000 }, async () => {
  const { dir, image, bytes } = await fixture()
  try {
    const key = signingKeyFromSeed(randomBytes(32))
    const m = await manifestFromFile({ imageId: 'img', path: image, blockSizeBytes: BS, key })
    const file = fileBlockSource(image)
    const presence = memoryPresenceStore()
    // Every sync write counts as slow here: the first run is written on the loop, the rest through the pool.
    const cache = await BlockCache.open({ manifest: m, path: join(dir, 'cache'), presence, source: file, slowSyncWriteMs: -1 })
    const signal = AbortSignal.timeout(5000)
    await cache.read(0, 2 * BS, signal)
    await cache.flush()
    assert.equal(cache.stats().slowSyncWrites, 1)
    await cache.read(2 * BS, bytes.length - 2 * BS, signal)
    await cache.flush()
    assert.equal(cache.stats().slowSyncWrites, 1, 'backed off: the next writes went through the thread pool')
    await cache.close()
    const reopened = await BlockCache.open({ manifest: m, path: join(dir, 'cache'), presence, source: { async fetch () { throw new Error('no fetch expected') } } })
    assert.ok(Buffer.from(await reopened.read(0, bytes.length, signal)).equals(bytes), 'the cache file holds the image')
    await reopened.close()
    await file.close()
  } finally { await rm(dir, { recursive: true, force: true }) }
})

test('cache: the thread-pool spell doubles while sync writes stay slow, and starts over after a quiet while', () => {
  const base = SYNC_WRITE_BACKOFF_MS
  // The first slow write: the base spell.
  assert.equal(nextSyncWriteBackoffMs(base, -Infinity, 1_000), base)
  // Slow again as soon as the spell ended (the disk is slow all the time): 2x, 4x, ... up to the bound.
  let backoff = base
  let at = 1_000
  const spells = [backoff]
  for (let i = 0; i < 8; i++) {
    const next = at + backoff + 5
    backoff = nextSyncWriteBackoffMs(backoff, at, next)
    at = next
    spells.push(backoff)
  }
  assert.deepEqual(spells, [base, 2 * base, 4 * base, 8 * base, 16 * base, 32 * base, MAX_SYNC_WRITE_BACKOFF_MS, MAX_SYNC_WRITE_BACKOFF_MS, MAX_SYNC_WRITE_BACKOFF_MS])
  // Slow once in a long while: the base spell again.
  assert.equal(nextSyncWriteBackoffMs(MAX_SYNC_WRITE_BACKOFF_MS, at, at + 2 * MAX_SYNC_WRITE_BACKOFF_MS + 1), base)
  assert.equal(nextSyncWriteBackoffMs(4 * base, at, at + 8 * base + 1), base)
})

test('cache: a source that keeps sending bad data fails the read, stores nothing', { timeout: 10_000 }, async () => {
  const { dir, image } = await fixture()
  try {
    const key = signingKeyFromSeed(randomBytes(32))
    const m = await manifestFromFile({ imageId: 'img', path: image, blockSizeBytes: BS, key })
    const cache = await BlockCache.open({
      manifest: m,
      path: join(dir, 'cache'),
      presence: memoryPresenceStore(),
      source: { async fetch (_m, idx) { return idx.map(index => ({ index, data: randomBytes(BS) })) } }
    })
    await assert.rejects(cache.read(0, 10, AbortSignal.timeout(5000)), { name: 'BlockVerificationError' })
    assert.equal(cache.has(0), false)
    await assert.rejects(cache.readBlock(0), { name: 'BlockNotPresentError' })
    await assert.rejects(cache.read(0, m.sizeBytes + 1, AbortSignal.timeout(5000)), { name: 'ReadRangeError' })
    await cache.close()
  } finally { await rm(dir, { recursive: true, force: true }) }
})

test('cache: many fetches in flight at once (reads outrunning the source) raise no MaxListenersExceededWarning', { timeout: 20_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vmt-mc-'))
  const bytes = randomBytes(BS * 40)
  const image = join(dir, 'img.raw')
  await writeFile(image, bytes)
  const warnings: string[] = []
  const onWarning = (w: Error): void => { warnings.push(w.name) }
  process.on('warning', onWarning)
  try {
    const m = await manifestFromFile({ imageId: 'img', path: image, blockSizeBytes: BS, key: signingKeyFromSeed(randomBytes(32)) })
    const file = fileBlockSource(image)
    // The source answers only once every read has asked: 40 fetch batches in flight together.
    let release!: () => void
    const released = new Promise<void>(resolve => { release = resolve })
    let asked = 0
    const source: BlockSource = {
      async fetch (manifest, indexes, options) {
        if (++asked === 40) release()
        await released
        return await file.fetch(manifest, indexes, options)
      }
    }
    const cache = await BlockCache.open({ manifest: m, path: join(dir, 'cache'), presence: memoryPresenceStore(), source })
    const signal = AbortSignal.timeout(10_000)
    // The reads' own signal is its owner's to bound, as the NBD connection does for its reads in flight.
    setMaxListeners(100, signal)
    const reads = await Promise.all(Array.from({ length: 40 }, async (_, i) => await cache.read(i * BS, BS, signal)))
    assert.ok(Buffer.concat(reads).equals(bytes))
    await cache.close()
    // Warnings are emitted on the next tick.
    await new Promise(resolve => setImmediate(resolve))
    assert.deepEqual(warnings.filter(name => name === 'MaxListenersExceededWarning'), [])
  } finally {
    process.off('warning', onWarning)
    await rm(dir, { recursive: true, force: true })
  }
})

test('cache: caches that share a pending-write budget commit when their blocks together press on it, reads or not', { timeout: 10_000 }, async (t) => {
  const { dir, bytes, m, file, settle } = await mockedWriterFixture(t)
  try {
    // Every cache is being read all along (the clock never moves): on its own, none would commit for seconds.
    const budget = new PendingWriteBudget(4 * BS)
    const open = async (name: string, pendingWrites?: PendingWriteBudget): Promise<BlockCache> =>
      await BlockCache.open({ manifest: m, path: join(dir, name), presence: memoryPresenceStore(), source: file, commitQuietMs: 1000, maxCommitDeferMs: 10_000, nowMs: () => 0, pendingWrites })
    const a = await open('a', budget)
    const b = await open('b', budget)
    const alone = await open('alone')
    const signal = new AbortController().signal
    assert.deepEqual(Buffer.from(await a.read(0, 2 * BS, signal)), bytes.subarray(0, 2 * BS))
    assert.deepEqual(Buffer.from(await alone.read(0, 2 * BS, signal)), bytes.subarray(0, 2 * BS))
    await settle()
    assert.equal(budget.bytes, 2 * BS, 'a\'s blocks wait in the shared budget')
    assert.ok(!a.isDurable(0) && !alone.isDurable(0), 'under 7/8 of the budget: the commits wait for the reads to pause')
    // b's blocks take the shared budget over 7/8: both caches commit now, a included.
    assert.deepEqual(Buffer.from(await b.read(2 * BS, 2 * BS, signal)), bytes.subarray(2 * BS, 4 * BS))
    await settle(() => a.isDurable(1) && b.isDurable(3))
    assert.ok(a.isDurable(0) && a.isDurable(1) && b.isDurable(2) && b.isDurable(3), 'the budget pressed: every cache sharing it committed')
    assert.equal(budget.bytes, 0)
    assert.ok(!alone.isDurable(0), 'a cache with a budget of its own still waits')
    t.mock.timers.reset()
    for (const cache of [a, b, alone]) await cache.close()
    assert.equal(budget.bytes, 0)
    await file.close()
  } finally { await rm(dir, { recursive: true, force: true }) }
})

test('cache: while the image is being read, a commit waits for the reads to pause, within a bound; flush does not wait', { timeout: 10_000 }, async (t) => {
  // The writer's timers are mocked; its file writes (an fdatasync in the thread pool) are real.
  const { dir, bytes, m, file, settle } = await mockedWriterFixture(t)
  try {
    let nowMs = 0
    const cache = await BlockCache.open({ manifest: m, path: join(dir, 'cache'), presence: memoryPresenceStore(), source: file, commitQuietMs: 1000, maxCommitDeferMs: 3000, nowMs: () => nowMs })
    const signal = new AbortController().signal
    const advance = async (ms: number, until?: () => boolean): Promise<void> => { nowMs += ms; t.mock.timers.tick(ms); await settle(until) }
    assert.deepEqual(Buffer.from(await cache.read(0, 2 * BS, signal)), bytes.subarray(0, 2 * BS))
    await settle()
    await advance(100)
    assert.ok(!cache.isDurable(0) && !cache.isDurable(1), 'read 100 ms ago: the commit waits')
    await advance(500)
    await cache.read(0, BS, signal) // from memory; the image is still being read
    await advance(900)
    assert.ok(!cache.isDurable(0), 'read 900 ms ago: still waiting')
    await advance(100, () => cache.isDurable(1))
    assert.ok(cache.isDurable(0) && cache.isDurable(1), 'reads paused for 1 s: committed')
    // Reads that never pause: the commit goes down after maxCommitDeferMs all the same.
    await cache.read(2 * BS, BS, signal)
    for (let waited = 0; waited < 2500; waited += 500) {
      await advance(500)
      await cache.read(0, BS, signal)
    }
    assert.ok(!cache.isDurable(2), '2.5 s of reads: waiting')
    await advance(600, () => cache.isDurable(2))
    assert.ok(cache.isDurable(2), 'deferred 3 s at most')
    // flush() ends the wait at once.
    await cache.read(3 * BS, BS, signal)
    await cache.flush()
    assert.ok(cache.isDurable(3))
    t.mock.timers.reset()
    await cache.close()
    await file.close()
  } finally { await rm(dir, { recursive: true, force: true }) }
})

test('cache: a read within one block waiting for its commit is a view of it (no copy, not taken by a pool); other reads are assembled in the pool\'s buffers', { timeout: 30_000 }, async () => {
  const { dir, image, bytes } = await fixture()
  const key = signingKeyFromSeed(randomBytes(32))
  const m = await manifestFromFile({ imageId: 'img', path: image, blockSizeBytes: BS, key })
  const file = fileBlockSource(image)
  const cache = await BlockCache.open({ manifest: m, path: join(dir, 'cache'), presence: memoryPresenceStore(), source: file })
  try {
    const signal = AbortSignal.timeout(5000)
    const pool = new BufferPool()
    const given: Uint8Array[] = []
    const allocate = (length: number): Buffer => { const b = pool.acquire(length); given.push(b); return b }
    const a = await cache.read(BS + 10, 100, signal, { allocate })
    const b = await cache.read(BS + 200, 300, signal, { allocate })
    assert.deepEqual(Buffer.from(a), bytes.subarray(BS + 10, BS + 110))
    assert.deepEqual(Buffer.from(b), bytes.subarray(BS + 200, BS + 500))
    assert.ok(!cache.isDurable(1))
    assert.equal(a.buffer, b.buffer, 'both are views of the block held for its commit')
    assert.equal(given.length, 0, 'nothing taken from the pool')
    pool.release(a) // not the pool's: ignored
    assert.equal(pool.pooled, 0)
    // Over two blocks: assembled in a pooled buffer.
    const c = await cache.read(BS - 50, 100, signal, { allocate })
    assert.deepEqual(Buffer.from(c), bytes.subarray(BS - 50, BS + 50))
    assert.equal(given.length, 1)
    assert.equal(c.buffer, given[0].buffer)
    // Once durable, a read comes from the file into a pooled buffer.
    await cache.flush()
    const d = await cache.read(BS + 10, 100, signal, { allocate })
    assert.deepEqual(Buffer.from(d), bytes.subarray(BS + 10, BS + 110))
    assert.equal(d.buffer, given[1].buffer)
  } finally {
    await cache.close()
    await file.close()
    await rm(dir, { recursive: true, force: true })
  }
})
