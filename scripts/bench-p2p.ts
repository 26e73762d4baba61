// Benchmark of the p2p block path, with its baselines measured in the same run:
//  1. agent->agent block throughput over libp2p (noise, plaintext; a few frame/yamux sizes) vs raw TCP;
//  2. round trip of one on-demand 64 KiB block on a reused stream vs raw TCP;
//  3. the Debian boot trace replayed through a cold agent's BlockCache whose parent is a warm agent, vs the
//     same replay on a local file; as fast as possible and with the trace's think times.
// Run: node --import tsx scripts/bench-p2p.ts [--json] [--quick] [--throughput-only]   (BENCH_CONFIG=plaintext: one variant)

import '../src/polyfill.js'
import { createServer, connect, type Socket } from 'node:net'
import { mkdtemp, open, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { signManifest, sha256, HASH_BYTES, manifestFromFile, type Manifest } from '../src/blockstack/manifest.js'
import type { BlockStore } from '../src/blockstack/types.js'
import { BlockCache } from '../src/blockstack/cache.js'
import { memoryPresenceStore } from '../src/blockstack/presence.js'
import { fileBlockSource } from '../src/blockstack/file-source.js'
import { identityFromSeed, type Identity } from '../src/identity/key.js'
import { createP2PService, type P2PService, type P2PServiceInit } from '../src/p2p/service.js'
import { PeerLink } from '../src/p2p/peer-link.js'
import { peerIdFromString } from '@libp2p/peer-id'

const args = new Set(process.argv.slice(2))
const JSON_OUT = args.has('--json')
const QUICK = args.has('--quick')
const ONLY_THROUGHPUT = args.has('--throughput-only')
const BLOCK = 64 * 1024
const THROUGHPUT_BYTES = (QUICK ? 32 : 128) * 1024 * 1024
const RTT_SAMPLES = QUICK ? 100 : 400
const TRACE = join(import.meta.dirname, '../test/fixtures/debian12-boot.reads.csv')
const TRACE_IMAGE_BYTES = 1024 * 1024 * 1024
const results: Record<string, unknown> = {}

function say (line: string): void {
  if (!JSON_OUT) console.log(line)
}

function mib (bytes: number): string { return (bytes / 1024 / 1024).toFixed(1) }

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]
}

function percentile (values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]
}

/** A manifest over in-memory data, and a store that serves it without copies. */
function memoryImage (key: Identity, data: Buffer, imageId: string): { manifest: Manifest, full: BlockStore, empty: BlockStore } {
  const blockCount = Math.ceil(data.length / BLOCK)
  const hashes = new Uint8Array(blockCount * HASH_BYTES)
  for (let i = 0; i < blockCount; i++) hashes.set(sha256(data.subarray(i * BLOCK, (i + 1) * BLOCK)), i * HASH_BYTES)
  const manifest = signManifest({ imageId, sizeBytes: data.length, blockSizeBytes: BLOCK, createdAtMs: Date.now(), blockHashes: hashes, originPublicKey: key.publicKey }, key)
  const ones = new Uint8Array(Math.ceil(blockCount / 8)).fill(0xff)
  return {
    manifest,
    full: {
      manifest,
      has: () => true,
      readBlock: async (i: number) => data.subarray(i * BLOCK, Math.min(data.length, (i + 1) * BLOCK)),
      presentCount: () => blockCount,
      presentBitmap: () => ones
    },
    empty: { manifest, has: () => false, readBlock: async () => { throw new Error('empty') }, presentCount: () => 0, presentBitmap: () => new Uint8Array(ones.length) }
  }
}

function serviceInit (identity: Identity, extra: Partial<P2PServiceInit>): P2PServiceInit {
  return { identity, listen: ['/ip4/127.0.0.1/tcp/0'], heartbeatMs: 300, ...extra }
}

async function waitFor (what: string, predicate: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

/** Two agents: `sender` serves `store`; `receiver` knows the image and has the sender as its parent. */
async function pair (extra: Partial<P2PServiceInit>, senderStore: BlockStore, receiverStore: BlockStore): Promise<{ sender: P2PService, receiver: P2PService, close: () => Promise<void> }> {
  const senderId = identityFromSeed(randomBytes(32))
  const sender = createP2PService(serviceInit(senderId, extra))
  sender.addImage(senderStore)
  await sender.start()
  const receiver = createP2PService(serviceInit(identityFromSeed(randomBytes(32)), { ...extra, bootstrap: sender.multiaddrs(), trustedKeys: [senderId.publicKey] }))
  receiver.addImage(receiverStore)
  await receiver.start()
  const imageId = senderStore.manifest.imageId
  await waitFor('parent', () => receiver.status().images[imageId]?.parents.includes(sender.peerId) === true)
  return { sender, receiver, async close () { await receiver.stop(); await sender.stop() } }
}

// ---- 1. throughput ----

async function rawTcpThroughput (data: Buffer): Promise<number> {
  const server = createServer(socket => {
    socket.once('data', () => {
      const chunk = 1024 * 1024
      let at = 0
      const pump = (): void => {
        while (at < data.length) {
          const ok = socket.write(data.subarray(at, at + chunk))
          at += chunk
          if (!ok) { socket.once('drain', pump); return }
        }
        socket.end()
      }
      pump()
    })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port
  const start = performance.now()
  const received = await new Promise<number>((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.write('go'))
    let bytes = 0
    socket.on('data', (d: Buffer) => { bytes += d.length })
    socket.on('end', () => resolve(bytes))
    socket.on('error', reject)
  })
  const seconds = (performance.now() - start) / 1000
  server.close()
  if (received !== data.length) throw new Error('raw transfer short')
  return received / seconds
}

async function libp2pThroughput (data: Buffer, extra: Partial<P2PServiceInit>, label: string): Promise<number> {
  const key = identityFromSeed(randomBytes(32))
  const image = memoryImage(key, data, 'bench')
  const p = await pair(extra, image.full, image.empty)
  try {
    const indexes = Array.from({ length: image.manifest.blockCount }, (_, i) => i)
    const batch = 16
    const batches: number[][] = []
    for (let i = 0; i < indexes.length; i += batch) batches.push(indexes.slice(i, i + batch))
    // Warm the stream, then measure.
    await p.receiver.blockSource.fetch(image.manifest, [0], { signal: AbortSignal.timeout(10_000) })
    const start = performance.now()
    let next = 0
    let bytes = 0
    const worker = async (): Promise<void> => {
      while (next < batches.length) {
        const blocks = await p.receiver.blockSource.fetch(image.manifest, batches[next++], { signal: AbortSignal.timeout(60_000), priority: 'prefetch' })
        for (const block of blocks) bytes += block.data.byteLength
      }
    }
    await Promise.all(Array.from({ length: 16 }, worker))
    const seconds = (performance.now() - start) / 1000
    if (bytes !== data.length) throw new Error(`${label}: got ${bytes} of ${data.length} bytes`)
    return bytes / seconds
  } finally {
    await p.close()
  }
}

// ---- 2. round trip of one block ----

async function rawTcpRtt (block: Buffer): Promise<number[]> {
  const server = createServer(socket => {
    socket.on('data', () => { socket.write(block) })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port
  const socket: Socket = await new Promise(resolve => { const s = connect(port, '127.0.0.1', () => resolve(s)) })
  socket.setNoDelay(true)
  const samples: number[] = []
  for (let i = 0; i < RTT_SAMPLES + 20; i++) {
    const start = performance.now()
    await new Promise<void>(resolve => {
      let got = 0
      const onData = (d: Buffer): void => {
        got += d.length
        if (got >= block.length) { socket.off('data', onData); resolve() }
      }
      socket.on('data', onData)
      socket.write('x')
    })
    if (i >= 20) samples.push(performance.now() - start)
  }
  socket.destroy()
  server.close()
  return samples
}

async function libp2pRtt (extra: Partial<P2PServiceInit>): Promise<number[]> {
  const key = identityFromSeed(randomBytes(32))
  const image = memoryImage(key, randomBytes(4 * 1024 * 1024), 'rtt')
  const p = await pair(extra, image.full, image.empty)
  try {
    const link = new PeerLink(p.receiver.node(), peerIdFromString(p.sender.peerId), { info () {}, warn () {}, error () {} })
    const samples: number[] = []
    for (let i = 0; i < RTT_SAMPLES + 20; i++) {
      const start = performance.now()
      const got = await link.getBlocks(image.manifest.root, [i % image.manifest.blockCount], 0, { signal: AbortSignal.timeout(5000) })
      if (i >= 20) samples.push(performance.now() - start)
      if ((got.get(i % image.manifest.blockCount)?.byteLength ?? 0) !== BLOCK) throw new Error('rtt: short block')
    }
    link.close()
    return samples
  } finally {
    await p.close()
  }
}

// ---- 3. boot trace ----

interface TraceRead { timeMs: number, offset: number, length: number }

async function loadTrace (): Promise<TraceRead[]> {
  const lines = (await readFile(TRACE, 'utf8')).trim().split('\n').slice(1)
  return lines.map(line => {
    const [t, o, l] = line.split(',')
    return { timeMs: Number(t), offset: Number(o), length: Number(l) }
  })
}

async function makeTraceImage (path: string, trace: TraceRead[]): Promise<void> {
  const handle = await open(path, 'w')
  try {
    await handle.truncate(TRACE_IMAGE_BYTES)
    const blocks = new Set<number>()
    for (const r of trace) for (let b = Math.floor(r.offset / BLOCK); b <= Math.floor((r.offset + r.length - 1) / BLOCK); b++) blocks.add(b)
    for (const b of [...blocks].sort((x, y) => x - y)) await handle.write(randomBytes(BLOCK), 0, BLOCK, b * BLOCK)
  } finally {
    await handle.close()
  }
}

/** Replays the reads one at a time (a booting VM), optionally waiting for each read's trace time. */
async function replay (trace: TraceRead[], read: (offset: number, length: number) => Promise<unknown>, thinkTimes: boolean): Promise<number> {
  const start = performance.now()
  for (const r of trace) {
    if (thinkTimes) {
      const wait = r.timeMs - (performance.now() - start)
      if (wait > 0) await sleep(wait)
    }
    await read(r.offset, r.length)
  }
  return (performance.now() - start) / 1000
}

async function traceBench (dir: string, extra: Partial<P2PServiceInit>): Promise<Record<string, number>> {
  const trace = await loadTrace()
  const imagePath = join(dir, 'trace.raw')
  await makeTraceImage(imagePath, trace)
  const warmId = identityFromSeed(randomBytes(32))
  const manifest = await manifestFromFile({ imageId: 'trace', path: imagePath, blockSizeBytes: BLOCK, key: warmId })
  const file = fileBlockSource(imagePath)
  const out: Record<string, number> = {}
  // Baseline: the local file.
  const fh = await open(imagePath, 'r')
  const localRead = async (offset: number, length: number): Promise<void> => { await fh.read(Buffer.allocUnsafe(length), 0, length, offset) }
  out.localFastSeconds = await replay(trace, localRead, false)
  out.localThinkSeconds = await replay(trace, localRead, true)
  await fh.close()
  for (const think of [false, true]) {
    const warmCache = await BlockCache.open({ manifest, path: join(dir, `warm-${String(think)}.cache`), presence: memoryPresenceStore(), source: file })
    const missing: number[] = []
    for (let i = 0; i < manifest.blockCount; i++) if (!warmCache.has(i)) missing.push(i)
    for (let i = 0; i < missing.length; i += 256) await warmCache.ensure(missing.slice(i, i + 256), { signal: AbortSignal.timeout(60_000) })
    await warmCache.flush()
    const warm = createP2PService(serviceInit(warmId, extra))
    warm.addImage(warmCache)
    await warm.start()
    const cold = createP2PService(serviceInit(identityFromSeed(randomBytes(32)), { ...extra, bootstrap: warm.multiaddrs(), trustedKeys: [warmId.publicKey] }))
    await cold.start()
    try {
      const m = await cold.fetchManifest('trace', { signal: AbortSignal.timeout(10_000) })
      const coldCache = await BlockCache.open({ manifest: m, path: join(dir, `cold-${String(think)}.cache`), presence: memoryPresenceStore(), source: cold.blockSource })
      cold.addImage(coldCache)
      await waitFor('cold agent has its parent', () => cold.status().images.trace?.parents.includes(warm.peerId) === true)
      const seconds = await replay(trace, async (offset, length) => await coldCache.read(offset, length, AbortSignal.timeout(30_000)), think)
      out[think ? 'p2pThinkSeconds' : 'p2pFastSeconds'] = seconds
      out[think ? 'p2pThinkBytesReceived' : 'p2pFastBytesReceived'] = cold.status().images.trace.bytesReceived
      await coldCache.close()
    } finally {
      await cold.stop()
      await warm.stop()
      await warmCache.close()
    }
  }
  await file.close()
  out.addedFastSeconds = out.p2pFastSeconds - out.localFastSeconds
  out.addedThinkSeconds = out.p2pThinkSeconds - out.localThinkSeconds
  out.reads = trace.length
  return out
}

async function main (): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'vmt-bench-p2p-'))
  try {
    const data = randomBytes(THROUGHPUT_BYTES)
    say(`# p2p benchmark (loopback, ${mib(THROUGHPUT_BYTES)} MiB transfers, ${BLOCK / 1024} KiB blocks)`)
    const raw = await rawTcpThroughput(data)
    say(`raw TCP                                   ${mib(raw).padStart(8)} MiB/s   1.00x`)
    const allConfigs: Array<{ label: string, extra: Partial<P2PServiceInit> }> = [
      { label: 'noise, 1 MiB frames, yamux 256 KiB', extra: { encryption: 'noise' } },
      { label: 'noise, 256 KiB frames, yamux 64 KiB', extra: { encryption: 'noise', frameBudgetBytes: 256 * 1024, maxRequestBytes: 256 * 1024, yamuxMaxMessageBytes: 64 * 1024 } },
      { label: 'plaintext, 1 MiB frames, yamux 256 KiB', extra: { encryption: 'plaintext' } },
      { label: 'plaintext, 1 MiB frames, yamux 1 MiB', extra: { encryption: 'plaintext', yamuxMaxMessageBytes: 1024 * 1024 } },
      { label: 'plaintext, 256 KiB frames, yamux 64 KiB', extra: { encryption: 'plaintext', frameBudgetBytes: 256 * 1024, maxRequestBytes: 256 * 1024, yamuxMaxMessageBytes: 64 * 1024 } }
    ]
    const configs = process.env.BENCH_CONFIG !== undefined ? allConfigs.filter(c => c.label.startsWith(process.env.BENCH_CONFIG as string)) : allConfigs
    const throughput: Record<string, { bytesPerSec: number, ratioToRaw: number }> = {}
    for (const config of configs) {
      const rate = await libp2pThroughput(data, config.extra, config.label)
      throughput[config.label] = { bytesPerSec: rate, ratioToRaw: rate / raw }
      say(`libp2p ${config.label.padEnd(36)} ${mib(rate).padStart(8)} MiB/s   ${(rate / raw).toFixed(2)}x raw`)
    }
    results.throughput = { rawBytesPerSec: raw, libp2p: throughput }
    if (ONLY_THROUGHPUT) return

    say('# round trip of one on-demand 64 KiB block (reused stream)')
    const rawRtt = await rawTcpRtt(randomBytes(BLOCK))
    const noiseRtt = await libp2pRtt({ encryption: 'noise' })
    const plainRtt = await libp2pRtt({ encryption: 'plaintext' })
    const rtt = {
      rawMedianMs: median(rawRtt), rawP99Ms: percentile(rawRtt, 0.99),
      noiseMedianMs: median(noiseRtt), noiseP99Ms: percentile(noiseRtt, 0.99),
      plaintextMedianMs: median(plainRtt), plaintextP99Ms: percentile(plainRtt, 0.99)
    }
    results.rtt = rtt
    say(`raw TCP      median ${rtt.rawMedianMs.toFixed(3)} ms  p99 ${rtt.rawP99Ms.toFixed(3)} ms`)
    say(`noise        median ${rtt.noiseMedianMs.toFixed(3)} ms  p99 ${rtt.noiseP99Ms.toFixed(3)} ms   ${(rtt.noiseMedianMs / rtt.rawMedianMs).toFixed(1)}x raw`)
    say(`plaintext    median ${rtt.plaintextMedianMs.toFixed(3)} ms  p99 ${rtt.plaintextP99Ms.toFixed(3)} ms   ${(rtt.plaintextMedianMs / rtt.rawMedianMs).toFixed(1)}x raw`)

    say('# boot trace (1,006 reads, 1 GiB image) through a cold agent whose parent is a warm agent (noise)')
    const trace = await traceBench(dir, { encryption: 'noise' })
    results.trace = trace
    say(`as fast as possible: local file ${trace.localFastSeconds.toFixed(3)} s, p2p ${trace.p2pFastSeconds.toFixed(3)} s (+${trace.addedFastSeconds.toFixed(3)} s, ${mib(trace.p2pFastBytesReceived)} MiB moved)`)
    say(`with think times:    local file ${trace.localThinkSeconds.toFixed(3)} s, p2p ${trace.p2pThinkSeconds.toFixed(3)} s (+${trace.addedThinkSeconds.toFixed(3)} s)`)
    if (JSON_OUT) console.log(JSON.stringify(results, null, 2))
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

await main()
