// An in-process p2p cluster for integration tests: real libp2p agents in one process, over TCP on 127.0.0.1,
// an origin whose cache holds the whole image and agents with empty caches that read it through their
// BlockCache from each other (test/integration/p2p-cluster.test.ts, p2p-hostile.test.ts).

import '../../src/polyfill.js'
import assert from 'node:assert/strict'
import { mkdtemp, writeFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes, createHash } from 'node:crypto'
import { manifestFromFile, type Manifest } from '../../src/blockstack/manifest.js'
import { BlockCache, type Logger } from '../../src/blockstack/cache.js'
import { memoryPresenceStore } from '../../src/blockstack/presence.js'
import { fileBlockSource } from '../../src/blockstack/file-source.js'
import type { BlockSource } from '../../src/blockstack/types.js'
import { identityFromSeed, type Identity } from '../../src/identity/key.js'
import { createP2PService, type P2PService, type P2PServiceInit } from '../../src/p2p/service.js'

export const BLOCK = 64 * 1024

export type GossipSubScores = ReturnType<P2PService['node']>['services']['pubsub'] & { getScore: (peerId: string) => number }
export const IMAGE_ID = 'img'
export const HEARTBEAT_MS = 500

export interface Agent {
  identity: Identity
  service: P2PService
  cache?: BlockCache
}

export interface Cluster {
  dir: string
  bytes: Buffer
  sha: string
  manifest: Manifest
  origin: Agent
  agents: Agent[]
  close: () => Promise<void>
}

export async function makeImage (dir: string, sizeBytes: number): Promise<Buffer> {
  const bytes = randomBytes(sizeBytes)
  // Some zero blocks: never sent, holes in the caches.
  bytes.fill(0, 3 * BLOCK, 5 * BLOCK)
  await writeFile(join(dir, 'image.raw'), bytes)
  return bytes
}

export function debugLogger (name: string): Logger {
  const t0 = Date.now()
  const log = (level: string) => (message: string, fields?: Record<string, unknown>) => { console.log(`${Date.now() - t0} ${name} ${level} ${message} ${JSON.stringify(fields ?? {})}`) }
  return { info: log('info'), warn: log('warn'), error: log('error') }
}

export function agentInit (identity: Identity, extra: Partial<P2PServiceInit>): P2PServiceInit {
  return {
    identity,
    listen: ['/ip4/127.0.0.1/tcp/0'],
    heartbeatMs: HEARTBEAT_MS,
    ...(process.env.P2P_DEBUG !== undefined ? { logger: debugLogger(identity.peerId.slice(-4)) } : {}),
    topologyParams: { advertTimeoutMs: 4 * HEARTBEAT_MS, minParentHoldMs: 5 * HEARTBEAT_MS },
    ...extra
  }
}

export async function cluster (options: { agents: number, sizeBytes: number, originChildLimit?: number, psk?: Uint8Array,
  /** Extra service init of agent i (e.g. a test-only fault layer). */
  agentInitFor?: (i: number) => Partial<P2PServiceInit>
  /** Extra service init of the origin. */
  originInit?: Partial<P2PServiceInit> }): Promise<Cluster> {
  const dir = await mkdtemp(join(tmpdir(), 'vmt-p2p-'))
  const bytes = await makeImage(dir, options.sizeBytes)
  const originId = identityFromSeed(randomBytes(32))
  const manifest = await manifestFromFile({ imageId: IMAGE_ID, path: join(dir, 'image.raw'), blockSizeBytes: BLOCK, key: originId })
  const file = fileBlockSource(join(dir, 'image.raw'))
  const originCache = await BlockCache.open({ manifest, path: join(dir, 'origin.cache'), presence: memoryPresenceStore(), source: file })
  await originCache.ensure(Array.from({ length: manifest.blockCount }, (_, i) => i), { signal: AbortSignal.timeout(20_000) })
  await originCache.flush()
  assert.ok(originCache.isComplete())
  const origin: Agent = {
    identity: originId,
    service: createP2PService(agentInit(originId, { childLimit: options.originChildLimit ?? 1, psk: options.psk, ...options.originInit })),
    cache: originCache
  }
  origin.service.addImage(originCache)
  await origin.service.start()
  const bootstrap = origin.service.multiaddrs().filter(a => a.includes('127.0.0.1'))
  const agents: Agent[] = []
  for (let i = 0; i < options.agents; i++) {
    const identity = identityFromSeed(randomBytes(32))
    const service = createP2PService(agentInit(identity, { bootstrap, trustedKeys: [originId.publicKey], psk: options.psk, ...options.agentInitFor?.(i) }))
    await service.start()
    agents.push({ identity, service })
  }
  return {
    dir,
    bytes,
    sha: createHash('sha256').update(bytes).digest('hex'),
    manifest,
    origin,
    agents,
    async close () {
      for (const agent of [origin, ...agents]) {
        await agent.service.stop().catch(() => {})
        await agent.cache?.close().catch(() => {})
      }
      await file.close()
      await rm(dir, { recursive: true, force: true })
    }
  }
}

/** The agent fetches the manifest from peers, opens its cache on the peer source and serves it. */
export async function join_ (c: Cluster, agent: Agent, i: number, sourceFor?: (i: number, real: BlockSource) => BlockSource): Promise<BlockCache> {
  const manifest = await agent.service.fetchManifest(IMAGE_ID, { signal: AbortSignal.timeout(10_000) })
  assert.equal(manifest.rootHex, c.manifest.rootHex)
  const source = sourceFor?.(i, agent.service.blockSource) ?? agent.service.blockSource
  const cache = await BlockCache.open({ manifest, path: join(c.dir, `agent${i}.cache`), presence: memoryPresenceStore(), source })
  agent.cache = cache
  agent.service.addImage(cache)
  return cache
}

/** Reads the whole image through the cache in 1 MiB reads, 4 at a time; returns its SHA-256. */
export async function readAll (cache: BlockCache, onProgress?: (doneBytes: number) => void): Promise<string> {
  const size = cache.manifest.sizeBytes
  const chunk = 1024 * 1024
  const parts: Buffer[] = new Array(Math.ceil(size / chunk))
  let next = 0
  let done = 0
  const worker = async (): Promise<void> => {
    while (next < parts.length) {
      const i = next++
      const length = Math.min(chunk, size - i * chunk)
      parts[i] = Buffer.from(await cache.read(i * chunk, length, AbortSignal.timeout(60_000)))
      done += length
      onProgress?.(done)
    }
  }
  await Promise.all([worker(), worker(), worker(), worker()])
  return createHash('sha256').update(Buffer.concat(parts)).digest('hex')
}
