// The block path between real libp2p nodes over TCP on 127.0.0.1: the block server's busy and CANCEL paths,
// and the peer source's failover on busy and hedge with the loser cancelled; a cache read through the peer
// source across an outage of the only holder (it waits for the holder's return, woken by source changes, not
// by timers). Slowness is made with a gate on the server's store (a read that waits until the test opens it),
// not with timing; time for the peer source's bounds is a virtual clock that moves only when the test says.

import '../../src/polyfill.js'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, writeFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { peerIdFromString } from '@libp2p/peer-id'
import { manifestFromFile, type Manifest } from '../../src/blockstack/manifest.js'
import type { BlockStore } from '../../src/blockstack/types.js'
import { BlockCache, silentLogger } from '../../src/blockstack/cache.js'
import { memoryPresenceStore } from '../../src/blockstack/presence.js'
import type { Clock } from '../../src/p2p/clock.js'
import { identityFromSeed } from '../../src/identity/key.js'
import { createNode, type P2PNode } from '../../src/p2p/node.js'
import { serveBlockStream, type BlockServerInit } from '../../src/p2p/block-server.js'
import { PeerLink } from '../../src/p2p/peer-link.js'
import { PeerSource, type PeerDirectory } from '../../src/p2p/peer-source.js'
import { LastResortBudget } from '../../src/p2p/last-resort-budget.js'
import { BLOCKS_PROTOCOL, PRIORITY_DEMAND, PRIORITY_PREFETCH } from '../../src/p2p/wire.js'
import { TokenBucket } from '../../src/p2p/rate-limit.js'

const BLOCK = 64 * 1024

interface Server {
  node: P2PNode
  peerId: string
  sentBytes: () => number
  /** Reads wait until this resolves (none when not gated). */
  open: () => void
}

function memoryStore (manifest: Manifest, bytes: Buffer, gate?: Promise<void>, holds: (index: number) => boolean = () => true): BlockStore {
  return {
    manifest,
    has: index => index < manifest.blockCount && holds(index),
    readBlock: async index => {
      await gate
      return bytes.subarray(index * BLOCK, (index + 1) * BLOCK)
    },
    presentCount: () => manifest.blockCount,
    presentBitmap: () => new Uint8Array(Math.ceil(manifest.blockCount / 8)).fill(0xff)
  }
}

async function server (manifest: Manifest, bytes: Buffer, options: { gated?: boolean } & Partial<BlockServerInit> = {}): Promise<Server> {
  const node = await createNode({ identity: identityFromSeed(randomBytes(32)), listen: ['/ip4/127.0.0.1/tcp/0'] })
  let open!: () => void
  const gate = options.gated === true ? new Promise<void>(resolve => { open = resolve }) : undefined
  const store = memoryStore(manifest, bytes, gate)
  let sent = 0
  const stop = new AbortController()
  const init: BlockServerInit = {
    resolve: rootHex => rootHex === manifest.rootHex ? store : undefined,
    admit: () => ({ accepted: true, childCount: 0, childLimit: 8 }),
    uploadBucket: new TokenBucket(undefined),
    logger: silentLogger,
    onSent: (_root, _peer, n) => { sent += n },
    ...options
  }
  await node.handle(BLOCKS_PROTOCOL, (stream, connection) => { void serveBlockStream(init, stream, connection, stop.signal) })
  node.addEventListener('stop', () => { stop.abort() })
  return { node, peerId: node.peerId.toString(), sentBytes: () => sent, open: () => { open?.() } }
}

async function setup (blocks: number): Promise<{ dir: string, manifest: Manifest, bytes: Buffer, client: P2PNode, linkTo: (s: Server) => Promise<PeerLink> }> {
  const dir = await mkdtemp(join(tmpdir(), 'vmt-blockpath-'))
  const bytes = randomBytes(blocks * BLOCK)
  await writeFile(join(dir, 'image.raw'), bytes)
  const manifest = await manifestFromFile({ imageId: 'img', path: join(dir, 'image.raw'), blockSizeBytes: BLOCK, key: identityFromSeed(randomBytes(32)) })
  const client = await createNode({ identity: identityFromSeed(randomBytes(32)), listen: ['/ip4/127.0.0.1/tcp/0'] })
  const linkTo = async (s: Server): Promise<PeerLink> => {
    await client.dial(s.node.getMultiaddrs()[0], { signal: AbortSignal.timeout(10_000) })
    return new PeerLink(client, peerIdFromString(s.peerId), silentLogger)
  }
  return { dir, manifest, bytes, client, linkTo }
}

test('block server: requests over the queue bound get busy; a cancelled request sends no more frames', { timeout: 60_000 }, async () => {
  const { dir, manifest, bytes, client, linkTo } = await setup(16)
  // One block per frame, and a store whose reads wait at the gate after the first: the test decides the pace.
  let reads = 0
  let open!: () => void
  const gate = new Promise<void>(resolve => { open = resolve })
  const store = memoryStore(manifest, bytes)
  const gatedStore: BlockStore = { ...store, readBlock: async (index, o) => { if (reads++ > 0) await gate; return await store.readBlock(index, o) } }
  const s = await server(manifest, bytes, { maxQueuedRequests: 2, frameBudgetBytes: BLOCK, resolve: rootHex => rootHex === manifest.rootHex ? gatedStore : undefined })
  try {
    const link = await linkTo(s)
    const first = new AbortController()
    let firstBlocks = 0
    const gotFirst = Promise.withResolvers<void>()
    const r1 = link.getBlocks(manifest.root, [0, 1, 2, 3, 4, 5, 6, 7], PRIORITY_DEMAND, { signal: first.signal, onBlock: () => { firstBlocks++; gotFirst.resolve() } })
    const second = new AbortController()
    const r2 = link.getBlocks(manifest.root, [8, 9, 10, 11], PRIORITY_DEMAND, { signal: second.signal })
    const r3 = link.getBlocks(manifest.root, [12], PRIORITY_DEMAND, { signal: AbortSignal.timeout(20_000) })
    await assert.rejects(r3, { name: 'PeerBusyError' })
    await gotFirst.promise
    first.abort(new Error('cancelled by the test'))
    second.abort(new Error('cancelled by the test'))
    await assert.rejects(r1)
    await assert.rejects(r2)
    // Frames are handled in order: once the pong is back, the server has seen both CANCELs.
    await link.ping(AbortSignal.timeout(10_000))
    open()
    // The queue is free again, and the next request is answered without the cancelled ones' blocks first.
    const after = await link.getBlocks(manifest.root, [15], PRIORITY_DEMAND, { signal: AbortSignal.timeout(20_000) })
    assert.deepEqual(Buffer.from(after.get(15) as Uint8Array), bytes.subarray(15 * BLOCK, 16 * BLOCK))
    await link.ping(AbortSignal.timeout(10_000))
    // Sent: the first block, at most the frame that was being read when CANCEL came, and block 15.
    assert.equal(firstBlocks, 1)
    assert.ok(s.sentBytes() <= 3 * BLOCK, `server sent ${s.sentBytes()} bytes after both requests were cancelled`)
    link.close()
  } finally {
    await client.stop()
    await s.node.stop()
    await rm(dir, { recursive: true, force: true })
  }
})

function directoryOf (manifest: Manifest, servers: Array<{ server: Server, parent: boolean }>, links: Map<string, PeerLink>, failed: string[]): PeerDirectory {
  return {
    sources: () => servers.map(({ server, parent }) => ({ peerId: server.peerId, isParent: parent, holdProbability: () => 1, full: false })),
    attaching: () => false,
    canAttach: () => false,
    link: peerId => links.get(peerId) as PeerLink,
    isBanned: () => false,
    reportFailed: (_m, peerId, err) => { failed.push(`${peerId}:${err.name}`) },
    reportCorrupt: () => {},
    onReceived: () => {},
    waitForSources: async (_m, signal) => await new Promise((_resolve, reject) => { signal.addEventListener('abort', () => { reject(signal.reason) }, { once: true }) })
  }
}

test('block server: ADMIT carries the parents a child stripes over and whether it attaches; an older ADMIT carries neither', { timeout: 60_000 }, async () => {
  const { dir, manifest, bytes, client, linkTo } = await setup(2)
  const asked: unknown[] = []
  const s = await server(manifest, bytes, {
    admit: (_peer, rootHex, leave, share) => {
      asked.push({ rootHex, leave, share })
      return { accepted: share?.attaching !== true || share.parentCount > 1, childCount: asked.length, childLimit: 8 }
    }
  })
  try {
    const link = await linkTo(s)
    const signal = AbortSignal.timeout(20_000)
    assert.equal((await link.admit(manifest.root, false, signal, { parentCount: 1, attaching: true })).accepted, false)
    assert.equal((await link.admit(manifest.root, false, signal, { parentCount: 3, attaching: true })).accepted, true)
    assert.equal((await link.admit(manifest.root, false, signal)).accepted, true)
    assert.deepEqual(asked, [
      { rootHex: manifest.rootHex, leave: false, share: { parentCount: 1, attaching: true } },
      { rootHex: manifest.rootHex, leave: false, share: { parentCount: 3, attaching: true } },
      { rootHex: manifest.rootHex, leave: false, share: undefined }
    ])
    link.close()
  } finally {
    await client.stop()
    await s.node.stop()
    await rm(dir, { recursive: true, force: true })
  }
})

test('block server: the origin serves peers that are not its children within one shared budget, busy beyond it', { timeout: 60_000 }, async () => {
  const { dir, manifest, bytes, client, linkTo } = await setup(8)
  let nowMs = 0
  const children = new Set<string>()
  // A burst of 2 blocks, refilled at 1 block per simulated second: the test moves the clock.
  const budget = new LastResortBudget(2 * BLOCK, BLOCK, { nowMs: () => nowMs, sleep: async () => {} })
  const s = await server(manifest, bytes, { nonChildBudget: budget, chargesNonChildBudget: (rootHex, peerId) => rootHex === manifest.rootHex && !children.has(peerId) })
  try {
    const link = await linkTo(s)
    const get = async (indexes: number[]): Promise<Map<number, Uint8Array | null>> =>
      await link.getBlocks(manifest.root, indexes, PRIORITY_DEMAND, { signal: AbortSignal.timeout(20_000) })
    assert.deepEqual(Buffer.from((await get([0, 1])).get(1) as Uint8Array), bytes.subarray(BLOCK, 2 * BLOCK))
    await assert.rejects(get([2]), { name: 'PeerBusyError' })
    nowMs += 1000
    assert.equal((await get([2])).size, 1, 'refilled')
    await assert.rejects(get([3]), { name: 'PeerBusyError' })
    // A child is served whatever the budget holds.
    children.add(client.peerId.toString())
    assert.equal((await get([3, 4, 5, 6, 7])).size, 5)
    link.close()
  } finally {
    await client.stop()
    await s.node.stop()
    await rm(dir, { recursive: true, force: true })
  }
})

test('peer source: a slow parent is hedged to the next peer and its request is cancelled at once', { timeout: 60_000 }, async () => {
  const { dir, manifest, bytes, client, linkTo } = await setup(4)
  const slow = await server(manifest, bytes, { gated: true })
  const fast = await server(manifest, bytes)
  try {
    const links = new Map([[slow.peerId, await linkTo(slow)], [fast.peerId, await linkTo(fast)]])
    const failed: string[] = []
    const source = new PeerSource({
      directory: directoryOf(manifest, [{ server: slow, parent: true }, { server: fast, parent: false }], links, failed),
      scheduler: { hedgeMinMs: 5, hedgeFactor: 1 }
    })
    const blocks = await source.fetch(manifest, [2], { signal: AbortSignal.timeout(20_000) })
    assert.equal(blocks.length, 1)
    assert.equal(blocks[0].peer, fast.peerId, 'the hedge to the fast peer won')
    assert.deepEqual(Buffer.from(blocks[0].data), bytes.subarray(2 * BLOCK, 3 * BLOCK))
    assert.equal(source.stats.hedges, 1)
    assert.equal(source.stats.cancelled, 1, 'the slow request was cancelled')
    assert.equal(links.get(slow.peerId)?.inFlight, 0, 'nothing left in flight to the slow peer')
    assert.deepEqual(failed, [], 'a hedge loser is not reported failed')
    // The slow server drops the cancelled request: once its read completes nothing is sent.
    await links.get(slow.peerId)?.ping(AbortSignal.timeout(10_000))
    slow.open()
    await links.get(slow.peerId)?.ping(AbortSignal.timeout(10_000))
    source.stop()
    for (const link of links.values()) link.close()
  } finally {
    await client.stop()
    await slow.node.stop()
    await fast.node.stop()
    await rm(dir, { recursive: true, force: true })
  }
})

test('peer source: the blocks of one fetch that go to one peer leave as one GET, not one per block', { timeout: 60_000 }, async () => {
  const { dir, manifest, bytes, client, linkTo } = await setup(8)
  const parent = await server(manifest, bytes)
  try {
    const links = new Map([[parent.peerId, await linkTo(parent)]])
    const source = new PeerSource({ directory: directoryOf(manifest, [{ server: parent, parent: true }], links, []) })
    const blocks = await source.fetch(manifest, [1, 2, 3, 5], { signal: AbortSignal.timeout(20_000) })
    assert.deepEqual(blocks.map(b => b.index).sort(), [1, 2, 3, 5])
    for (const b of blocks) assert.deepEqual(Buffer.from(b.data), bytes.subarray(b.index * BLOCK, (b.index + 1) * BLOCK))
    assert.equal(source.stats.requests, 1, 'one request for the four blocks')
    source.stop()
    for (const link of links.values()) link.close()
  } finally {
    await client.stop()
    await parent.node.stop()
    await rm(dir, { recursive: true, force: true })
  }
})

test('peer source: a busy peer hands the block to the next one without being reported failed as a parent', { timeout: 60_000 }, async () => {
  const { dir, manifest, bytes, client, linkTo } = await setup(4)
  const busy = await server(manifest, bytes, { maxQueuedRequests: 0 })
  const other = await server(manifest, bytes)
  try {
    const links = new Map([[busy.peerId, await linkTo(busy)], [other.peerId, await linkTo(other)]])
    const failed: string[] = []
    const source = new PeerSource({ directory: directoryOf(manifest, [{ server: busy, parent: true }, { server: other, parent: false }], links, failed) })
    const blocks = await source.fetch(manifest, [1, 3], { signal: AbortSignal.timeout(20_000) })
    assert.deepEqual(blocks.map(b => b.peer), [other.peerId, other.peerId])
    for (const b of blocks) assert.deepEqual(Buffer.from(b.data), bytes.subarray(b.index * BLOCK, (b.index + 1) * BLOCK))
    assert.equal(busy.sentBytes(), 0)
    assert.ok(source.stats.failovers >= 2, `failovers ${source.stats.failovers}`)
    // Reported (the directory decides: busy does not fail a parent), with the busy error's name.
    assert.ok(failed.every(f => f === `${busy.peerId}:PeerBusyError`), failed.join(', '))
    source.stop()
    for (const link of links.values()) link.close()
  } finally {
    await client.stop()
    await busy.node.stop()
    await other.node.stop()
    await rm(dir, { recursive: true, force: true })
  }
})

test('block server: a demand request that arrives behind a prefetch request is answered first', { timeout: 60_000 }, async () => {
  const { dir, manifest, bytes, client, linkTo } = await setup(16)
  const s = await server(manifest, bytes, { gated: true })
  try {
    const link = await linkTo(s)
    const order: string[] = []
    const prefetch = link.getBlocks(manifest.root, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], PRIORITY_PREFETCH, { signal: AbortSignal.timeout(20_000) })
      .then(() => { order.push('prefetch') })
    // The ping's answer proves the prefetch GET was queued (and its first frame is waiting at the gate).
    await link.ping(AbortSignal.timeout(10_000))
    const demand = link.getBlocks(manifest.root, [12], PRIORITY_DEMAND, { signal: AbortSignal.timeout(20_000) })
      .then(blocks => { order.push('demand'); return blocks })
    await link.ping(AbortSignal.timeout(10_000))
    s.open()
    const [, got] = await Promise.all([prefetch, demand])
    assert.deepEqual(order, ['demand', 'prefetch'])
    assert.deepEqual(Buffer.from(got.get(12) as Uint8Array), bytes.subarray(12 * BLOCK, 13 * BLOCK))
    link.close()
  } finally {
    await client.stop()
    await s.node.stop()
    await rm(dir, { recursive: true, force: true })
  }
})

/**
 * A swarm the test changes by hand: which peers are sources (connected, with their advert's claims), and the
 * source-change events a real service sends at every advert, parent change and connection.
 */
class HandSwarm {
  readonly entries = new Map<string, { isParent: boolean, full: boolean, holds: (index: number) => boolean, connectionEpoch: number, advertSeq?: number, probability?: number }>()
  /** waitForSources calls so far (a job found nobody to ask and started waiting). */
  waits = 0
  /** What canAttach says: a tree with room for us (last-resort reads are then budgeted). */
  attachable = false
  private readonly waiters = new Set<() => void>()
  private waitSeen = Promise.withResolvers<void>()

  constructor (readonly links: Map<string, PeerLink>) {}

  /** A source-change event of the image: what an advert, a parent change or a connection sends. */
  change (): void {
    const woken = [...this.waiters]
    this.waiters.clear()
    for (const wake of woken) wake()
  }

  /** Resolves at the next waitForSources call. */
  async nextWait (): Promise<void> { await this.waitSeen.promise }

  readonly directory: PeerDirectory = {
    sources: () => [...this.entries].map(([peerId, e]) => ({ ...e, peerId, holdProbability: (index: number) => e.probability ?? (e.holds(index) ? 1 : 0) })),
    attaching: () => false,
    canAttach: () => this.attachable,
    link: peerId => this.links.get(peerId) as PeerLink,
    isBanned: () => false,
    reportFailed: () => {},
    reportCorrupt: () => {},
    onReceived: () => {},
    waitForSources: async (_m, signal) => {
      signal.throwIfAborted()
      this.waits++
      const seen = this.waitSeen
      this.waitSeen = Promise.withResolvers<void>()
      await new Promise<void>((resolve, reject) => {
        const wake = (): void => { signal.removeEventListener('abort', onAbort); resolve() }
        const onAbort = (): void => { this.waiters.delete(wake); reject(signal.reason) }
        this.waiters.add(wake)
        signal.addEventListener('abort', onAbort, { once: true })
        seen.resolve()
      })
    }
  }
}

/** A clock that stands still: its sleeps end only when the test calls expire() (or their signal aborts). */
function standingClock (): Clock & { expire: () => void, sleeping: () => number } {
  const sleeps = new Set<() => void>()
  return {
    nowMs: () => 0,
    sleep: async (_ms, signal) => {
      await new Promise<void>((resolve, reject) => {
        const done = (): void => { sleeps.delete(done); signal?.removeEventListener('abort', onAbort); resolve() }
        const onAbort = (): void => { sleeps.delete(done); reject(signal?.reason) }
        sleeps.add(done)
        signal?.addEventListener('abort', onAbort, { once: true })
      })
    },
    expire: () => { for (const done of [...sleeps]) done() },
    sleeping: () => sleeps.size
  }
}

/** Counts the cache's fetch rounds through the source, and those that failed outright. */
function countingSource (source: PeerSource): { source: PeerSource, rounds: () => number, failed: string[] } {
  let rounds = 0
  const failed: string[] = []
  const counted = Object.create(source) as PeerSource
  counted.fetch = async (manifest, indexes, options) => {
    rounds++
    try {
      return await source.fetch(manifest, indexes, options)
    } catch (err) {
      failed.push((err as Error).name)
      throw err
    }
  }
  return { source: counted, rounds: () => rounds, failed }
}

test('peer source: reads wait through an outage of the only holder and go on at its return, woken by adverts, not by timers', { timeout: 60_000 }, async () => {
  const { dir, manifest, bytes, client, linkTo } = await setup(4)
  // The holder (the origin) serves nothing while it is down; the parent (an orphaned relay) gets block 2 later.
  let holderUp = false
  const parentHolds = new Set<number>()
  const holder = await server(manifest, bytes, { resolve: () => memoryStore(manifest, bytes, undefined, () => holderUp) })
  const parent = await server(manifest, bytes, { resolve: () => memoryStore(manifest, bytes, undefined, index => parentHolds.has(index)) })
  const clock = standingClock()
  try {
    const swarm = new HandSwarm(new Map([[holder.peerId, await linkTo(holder)], [parent.peerId, await linkTo(parent)]]))
    swarm.entries.set(parent.peerId, { isParent: true, full: false, holds: index => parentHolds.has(index), connectionEpoch: 1, advertSeq: 1 })
    swarm.entries.set(holder.peerId, { isParent: false, full: true, holds: () => true, connectionEpoch: 1 })
    const peerSource = new PeerSource({ directory: swarm.directory, clock })
    const counted = countingSource(peerSource)
    const cache = await BlockCache.open({ manifest, path: join(dir, 'cache'), presence: memoryPresenceStore(), source: counted.source })
    const signal = AbortSignal.timeout(30_000)
    const waitsReach = async (n: number): Promise<void> => { while (swarm.waits < n) await swarm.nextWait() }
    const read1 = cache.read(1 * BLOCK, BLOCK, signal)
    const read2 = cache.read(2 * BLOCK, BLOCK, signal)
    await waitsReach(2)
    // Both jobs asked the parent (a relay with nothing) and the holder (going down) once each, and now wait.
    const requestsAtOutage = peerSource.stats.requests
    assert.ok(requestsAtOutage <= 4, `requests before the outage: ${requestsAtOutage}`)
    // The holder's connection is gone; adverts keep coming (several a second in a swarm) for a while.
    swarm.entries.delete(holder.peerId)
    for (let i = 0; i < 20; i++) {
      const waitsBefore = swarm.waits
      swarm.change()
      // Each job looked again, found nobody new to ask, and waits again (the old policy asked the parent again).
      await waitsReach(waitsBefore + 2)
    }
    assert.equal(peerSource.stats.requests, requestsAtOutage, 'no request while nobody new could serve the blocks')
    // The parent sends an advert of its own (still without the blocks): it relays, so each job asks it once
    // more, then waits again.
    const waitsBefore = swarm.waits
    ;(swarm.entries.get(parent.peerId) as { advertSeq?: number }).advertSeq = 2
    swarm.change()
    await waitsReach(waitsBefore + 2)
    // (Jobs woken by the same change leave as one GET when they go to the same peer: one or two requests.)
    const asked = peerSource.stats.requests - requestsAtOutage
    assert.ok(asked >= 1 && asked <= 2, `at most one request per job after the parent's advert: ${asked}`)
    // The parent got block 2 and its advert says so: that read goes on, from it.
    parentHolds.add(2)
    swarm.change()
    assert.deepEqual(Buffer.from(await read2), bytes.subarray(2 * BLOCK, 3 * BLOCK))
    // The holder restarts: a new connection, its advert back. Block 1 comes from it.
    holderUp = true
    swarm.entries.set(holder.peerId, { isParent: false, full: true, holds: () => true, connectionEpoch: 2 })
    swarm.change()
    assert.deepEqual(Buffer.from(await read1), bytes.subarray(1 * BLOCK, 2 * BLOCK))
    assert.equal(peerSource.stats.requests, requestsAtOutage + asked + 2, 'one request each after the blocks became available')
    assert.equal(peerSource.stats.wakeups, 4)
    // One fetch round of the cache per read, none failed: nothing backed off, and the clock (the only timer of
    // the peer source's waits) never moved: the events alone made the reads complete.
    assert.equal(counted.rounds(), 2)
    assert.deepEqual(counted.failed, [])
    assert.equal(clock.sleeping(), 0, 'no wait bound left running')
    await cache.close()
    peerSource.stop()
    for (const link of swarm.links.values()) link.close()
  } finally {
    await client.stop()
    await holder.node.stop()
    await parent.node.stop()
    await rm(dir, { recursive: true, force: true })
  }
})

test('peer source: a job that finds nobody fails with NoPeerForBlockError when its wait ends; the cache asks again at once', { timeout: 60_000 }, async () => {
  const { dir, manifest, client } = await setup(4)
  const clock = standingClock()
  try {
    const swarm = new HandSwarm(new Map())
    const peerSource = new PeerSource({ directory: swarm.directory, clock })
    const counted = countingSource(peerSource)
    const cache = await BlockCache.open({ manifest, path: join(dir, 'cache'), presence: memoryPresenceStore(), source: counted.source })
    const reader = new AbortController()
    let waited = swarm.nextWait()
    const read = cache.read(0, BLOCK, reader.signal)
    await waited
    assert.equal(clock.sleeping(), 1, 'the wait is bounded on the clock')
    waited = swarm.nextWait()
    clock.expire()
    // The job failed; the cache's next round started at once (a backoff would be a real timer) and waits again.
    await waited
    assert.deepEqual(counted.failed, ['NoPeerForBlockError'])
    assert.equal(counted.rounds(), 2)
    assert.equal(peerSource.stats.requests, 0)
    reader.abort(new Error('the reader gave up'))
    await assert.rejects(read, /the reader gave up/)
    await cache.close()
    peerSource.stop()
  } finally {
    await client.stop()
    await rm(dir, { recursive: true, force: true })
  }
})

/** A clock the test moves: sleeps end when advance() passes their deadline (or their signal aborts). */
function steppingClock (): Clock & { advance: (ms: number) => void, sleeping: () => number } {
  let now = 0
  const sleeps = new Map<() => void, number>()
  return {
    nowMs: () => now,
    sleep: async (ms, signal) => {
      await new Promise<void>((resolve, reject) => {
        const done = (): void => { sleeps.delete(done); signal?.removeEventListener('abort', onAbort); resolve() }
        const onAbort = (): void => { sleeps.delete(done); reject(signal?.reason) }
        sleeps.set(done, now + ms)
        signal?.addEventListener('abort', onAbort, { once: true })
      })
    },
    advance: (ms) => {
      now += ms
      for (const [done, until] of [...sleeps]) if (until <= now) done()
    },
    sleeping: () => sleeps.size
  }
}

test('peer source: a full peer (the origin while we attach) gives at most the last-resort budget; held-back reads go on as it refills', { timeout: 60_000 }, async () => {
  const { dir, manifest, bytes, client, linkTo } = await setup(4)
  const origin = await server(manifest, bytes)
  const clock = steppingClock()
  try {
    const swarm = new HandSwarm(new Map([[origin.peerId, await linkTo(origin)]]))
    swarm.entries.set(origin.peerId, { isParent: false, full: true, holds: () => true, connectionEpoch: 1 })
    swarm.attachable = true
    // A burst of two blocks, then one block a second.
    const budget = new LastResortBudget(2 * BLOCK, BLOCK, clock)
    const peerSource = new PeerSource({ directory: swarm.directory, clock, lastResortBudget: budget })
    const signal = AbortSignal.timeout(30_000)
    const waited = swarm.nextWait()
    const fetching = peerSource.fetch(manifest, [0, 1, 2, 3], { signal })
    await waited
    // Two blocks went to the origin at once; the other two wait, bounded by the refill time, not by events.
    assert.equal(peerSource.stats.lastResortBytes, 2 * BLOCK)
    assert.equal(clock.sleeping() >= 2, true, `sleeps ${clock.sleeping()}`)
    // An advert that changes nothing: still no budget, nothing more asked of the origin.
    const requests = peerSource.stats.requests
    let next = swarm.nextWait()
    swarm.change()
    await next
    assert.equal(peerSource.stats.lastResortBytes, 2 * BLOCK, 'no request beyond the budget')
    // One second refills one block: one more job goes; another second, the last.
    next = swarm.nextWait()
    clock.advance(1000)
    await next
    assert.equal(peerSource.stats.lastResortBytes, 3 * BLOCK)
    clock.advance(1000)
    const blocks = await fetching
    assert.equal(peerSource.stats.lastResortBytes, 4 * BLOCK)
    assert.ok(peerSource.stats.requests > requests)
    assert.deepEqual(blocks.map(b => b.index).sort(), [0, 1, 2, 3])
    for (const b of blocks) assert.deepEqual(Buffer.from(b.data), bytes.subarray(b.index * BLOCK, (b.index + 1) * BLOCK))
    assert.equal(clock.sleeping(), 0, 'no wait left running')
    peerSource.stop()
    // With no room in the tree (nobody could take us as a child) the last resort is the only way: no budget.
    swarm.attachable = false
    // A full peer's in-flight cap (one block here) also bounds how many queued jobs one GET takes.
    const unbudgeted = new PeerSource({ directory: swarm.directory, clock, lastResortBudget: new LastResortBudget(2 * BLOCK, BLOCK, clock), maxLastResortInflightBytesPerPeer: BLOCK })
    const all = await unbudgeted.fetch(manifest, [0, 1, 2, 3], { signal })
    assert.equal(all.length, 4)
    assert.equal(unbudgeted.stats.lastResortBytes, 4 * BLOCK)
    assert.equal(unbudgeted.stats.requests, 4, 'one block in flight at a time to the full peer')
    assert.equal(unbudgeted.stats.waits, 0)
    unbudgeted.stop()
    for (const link of swarm.links.values()) link.close()
  } finally {
    await client.stop()
    await origin.node.stop()
    await rm(dir, { recursive: true, force: true })
  }
})

test('last-resort budget: burst, refill at the rate, never in debt, bad parameters refused', { timeout: 5000 }, () => {
  let now = 0
  const budget = new LastResortBudget(2 * BLOCK, BLOCK, { nowMs: () => now, sleep: async () => {} })
  assert.equal(budget.tryTake(BLOCK), true)
  assert.equal(budget.tryTake(BLOCK), true)
  assert.equal(budget.tryTake(BLOCK), false)
  assert.equal(budget.msUntil(BLOCK), 1000)
  now += 500
  assert.equal(budget.tryTake(BLOCK), false, 'half a block is not a block')
  assert.equal(budget.msUntil(BLOCK), 500)
  now += 10_000
  assert.equal(budget.msUntil(3 * BLOCK), 0, 'a take larger than the burst needs a full bucket, not more')
  assert.equal(budget.tryTake(3 * BLOCK), true)
  assert.equal(budget.tryTake(1), false)
  assert.throws(() => new LastResortBudget(0, BLOCK), RangeError)
  assert.throws(() => new LastResortBudget(BLOCK, Number.NaN), RangeError)
})

test('peer source: with no parent, a seed is asked before peers whose summary only says they hold some of the block\'s group', { timeout: 60_000 }, async () => {
  const { dir, manifest, bytes, client, linkTo } = await setup(2)
  let guesserAsked = 0
  const guesser = await server(manifest, bytes, { resolve: rootHex => rootHex === manifest.rootHex ? memoryStore(manifest, bytes, undefined, () => false) : undefined, onRequest: () => { guesserAsked++ } })
  const seed = await server(manifest, bytes)
  try {
    const swarm = new HandSwarm(new Map([[guesser.peerId, await linkTo(guesser)], [seed.peerId, await linkTo(seed)]]))
    // The guesser's advert: some of the group (0.25); it has nothing. The seed is full (no free child slot).
    swarm.entries.set(guesser.peerId, { isParent: false, full: false, holds: () => false, probability: 0.25, connectionEpoch: 1 })
    swarm.entries.set(seed.peerId, { isParent: false, full: true, holds: () => true, connectionEpoch: 1 })
    // No hedge (a slow answer on a loaded machine would send a second request to the guess: timing, not order).
    const peerSource = new PeerSource({ directory: swarm.directory, scheduler: { hedgeMinMs: 120_000 } })
    const blocks = await peerSource.fetch(manifest, [1], { signal: AbortSignal.timeout(30_000) })
    assert.deepEqual(Buffer.from(blocks[0].data), bytes.subarray(BLOCK, 2 * BLOCK))
    assert.equal(blocks[0].peer, seed.peerId)
    assert.equal(guesserAsked, 0, 'the guess was not tried first')
    assert.equal(peerSource.stats.requests, 1)
    // A peer that probably holds it (most of the group) still goes before the seed.
    swarm.entries.set(guesser.peerId, { isParent: false, full: false, holds: () => false, probability: 0.75, connectionEpoch: 2 })
    const again = await peerSource.fetch(manifest, [0], { signal: AbortSignal.timeout(30_000) })
    assert.equal(again[0].peer, seed.peerId, 'it had none: the seed served it after')
    assert.equal(guesserAsked, 1)
    peerSource.stop()
    for (const link of swarm.links.values()) link.close()
  } finally {
    await client.stop()
    await guesser.node.stop()
    await seed.node.stop()
    await rm(dir, { recursive: true, force: true })
  }
})
