// The image catalog: an origin tells the cluster which images it serves, and every agent that trusts it fetches
// their signed manifests ahead (a few, bounded), so that a host's first instance.create of an image needs no
// round trip to the origin.
//
// Why: a new image's first create asked the origin for the manifest at the moment the VM was to boot, as every
// host of a wave did at once. In the 8-host testbed wave, on 2 loaded cores, opening that stream took 45-111 ms,
// the reply 34-77 ms and inflating and checking it 34-90 ms, nearly half of the seconds a host lost against a
// central server with think times. Fetched ahead, the create only installs the image.
//
// On gossip topic CATALOG_TOPIC an agent publishes the images it is the origin of (it signed their manifests):
// JSON {v: 1, images: [{id, root}]}, signed by gossipsub (StrictSign) with the agent's key, which is the
// manifests' signing key. A receiver acts on a catalog only if its author is a trusted origin; the manifest it
// fetches is checked as any other (signature, root). Published when the agent's images change and when a peer
// subscribes to (or grafts) the topic, at most once per CATALOG_PUBLISH_MIN_INTERVAL_MS. Bounded: message size
// and entries, the fetch queue (one fetch at a time, each with a timeout), and the manifests held (count and bytes;
// the oldest go first). A manifest held is given to the create that asks for it, and dropped then; one its origin's
// next catalog no longer lists (the image was removed there) is dropped too.

import { TopicValidatorResult } from '@libp2p/gossipsub'
import type { PeerId } from '@libp2p/interface'
import type { Manifest } from '../blockstack/manifest.js'
import type { Clock } from './clock.js'

export const CATALOG_TOPIC = '/vmthunder/catalog/1'
/** Room for MAX_CATALOG_ENTRIES entries of the longest ids (64 characters): about 19 KB. */
export const MAX_CATALOG_MESSAGE_BYTES = 24 * 1024
/** Images in one catalog at most: an origin with more announces its newest. */
export const MAX_CATALOG_ENTRIES = 128
/** Manifests held ahead by default (config p2p.catalogManifests; 0: no catalog). */
export const DEFAULT_CATALOG_MANIFESTS = 16
/** Bytes of manifests held ahead at most (a 1 GiB image of 64 KiB blocks: about 0.5 MiB). */
export const MAX_CATALOG_MANIFEST_BYTES = 64 * 1024 * 1024
export const MAX_QUEUED_FETCHES = 64
export const CATALOG_FETCH_TIMEOUT_MS = 20_000
export const CATALOG_PUBLISH_MIN_INTERVAL_MS = 1_000
/** A create waits this long at most for the fetch of its manifest under way, then finds it the usual way. */
export const TAKE_WAIT_MS = 2_000

const IMAGE_ID = /^[A-Za-z0-9._-]{1,64}$/
const HEX64 = /^[0-9a-f]{64}$/

export interface CatalogEntry { id: string, root: string }

export class CatalogDecodeError extends Error {
  override name = 'CatalogDecodeError'
}

export function encodeCatalog (entries: readonly CatalogEntry[]): Uint8Array {
  return Buffer.from(JSON.stringify({ v: 1, images: entries.slice(-MAX_CATALOG_ENTRIES).map(e => ({ id: e.id, root: e.root })) }))
}

/** The entries of a well-formed catalog message; CatalogDecodeError otherwise. */
export function decodeCatalog (data: Uint8Array): CatalogEntry[] {
  if (data.byteLength > MAX_CATALOG_MESSAGE_BYTES) throw new CatalogDecodeError(`catalog of ${data.byteLength} bytes (at most ${MAX_CATALOG_MESSAGE_BYTES})`)
  let body: unknown
  try {
    body = JSON.parse(Buffer.from(data).toString('utf8'))
  } catch {
    throw new CatalogDecodeError('catalog is not JSON')
  }
  const images = (body as { v?: unknown, images?: unknown } | null)?.images
  if ((body as { v?: unknown } | null)?.v !== 1 || !Array.isArray(images) || images.length > MAX_CATALOG_ENTRIES) throw new CatalogDecodeError('catalog is not {v: 1, images: [...]} within bounds')
  return images.map((entry: unknown) => {
    const { id, root } = (entry ?? {}) as { id?: unknown, root?: unknown }
    if (typeof id !== 'string' || !IMAGE_ID.test(id) || typeof root !== 'string' || !HEX64.test(root)) throw new CatalogDecodeError('catalog entry is not {id, root}')
    return { id, root }
  })
}

/** The part of gossipsub the catalog uses. */
export interface CatalogPubsub {
  subscribe: (topic: string) => void
  unsubscribe: (topic: string) => void
  publish: (topic: string, data: Uint8Array) => Promise<unknown>
  topicValidators: Map<string, (from: PeerId, message: any) => TopicValidatorResult | Promise<TopicValidatorResult>>
  addEventListener: (type: 'message', handler: (event: CustomEvent<any>) => void) => void
  removeEventListener: (type: 'message', handler: (event: CustomEvent<any>) => void) => void
}

export interface CatalogInit {
  pubsub: () => CatalogPubsub
  /** Peer ids of the trusted origins (this agent's own excluded): only their catalogs are acted on. */
  origins: ReadonlySet<string>
  /** Manifests held ahead at most (0: none are fetched; the agent still publishes its own catalog). */
  maxManifests: number
  /** The images this agent is the origin of: what it announces. */
  ownImages: () => CatalogEntry[]
  /** True if the agent has this image with this root already: nothing to fetch. */
  has: (imageId: string, rootHex: string) => boolean
  /** The manifest from that peer, checked against the trusted keys. */
  fetch: (peerId: string, imageId: string, signal: AbortSignal) => Promise<Manifest>
  clock: Clock
  signal: AbortSignal
  logger: { info: (m: string, f?: Record<string, unknown>) => void, warn: (m: string, f?: Record<string, unknown>) => void }
}

export interface CatalogStats {
  /** Catalog messages from trusted origins received, and catalogs of other authors ignored (not forwarded). */
  received: number
  ignored: number
  /** Manifests fetched ahead, failed, held now, and given to a create. */
  fetched: number
  failed: number
  held: number
  used: number
}

export interface Catalog {
  start: () => void
  stop: () => void
  /** This agent's images changed, or a peer joined the topic: publish the catalog soon (bounded rate). */
  publishSoon: () => void
  /**
   * The manifest of `imageId` fetched ahead (taken: the caller installs it), or the one a fetch under way brings
   * within TAKE_WAIT_MS; undefined if there is none (a fetch still queued is not waited for).
   */
  take: (imageId: string, signal: AbortSignal) => Promise<Manifest | undefined>
  stats: () => CatalogStats
}

interface Job { peerId: string, entry: CatalogEntry, done: Promise<Manifest | undefined>, resolve: (m: Manifest | undefined) => void }

const manifestBytes = (m: Manifest): number => m.encoded.byteLength + m.blockHashes.byteLength + m.zeroBlocks.byteLength

export function createCatalog (init: CatalogInit): Catalog {
  const held = new Map<string, Manifest>() // insertion order: the oldest first
  /** The origin whose catalog named each manifest held. */
  const heldFrom = new Map<string, string>()
  let heldBytes = 0
  const queue: Job[] = []
  const jobs = new Map<string, Job>() // by image id: queued or under way
  let working = false
  let current: Job | undefined
  let started = false
  let publishPending = false
  let lastPublishMs = -Infinity
  /** The last catalog published listed images. */
  let announced = false
  const counts = { received: 0, ignored: 0, fetched: 0, failed: 0, used: 0 }

  const drop = (imageId: string): void => {
    const manifest = held.get(imageId)
    if (manifest === undefined) return
    held.delete(imageId)
    heldFrom.delete(imageId)
    heldBytes -= manifestBytes(manifest)
  }

  const hold = (manifest: Manifest, from: string): void => {
    drop(manifest.imageId)
    held.set(manifest.imageId, manifest)
    heldFrom.set(manifest.imageId, from)
    heldBytes += manifestBytes(manifest)
    for (const [oldest] of held) {
      if (held.size <= init.maxManifests && heldBytes <= MAX_CATALOG_MANIFEST_BYTES) break
      drop(oldest)
    }
  }

  const work = async (): Promise<void> => {
    if (working) return
    working = true
    try {
      for (let job = queue.shift(); job !== undefined && !init.signal.aborted; job = queue.shift()) {
        let manifest: Manifest | undefined
        current = job
        try {
          if (!init.has(job.entry.id, job.entry.root)) {
            manifest = await init.fetch(job.peerId, job.entry.id, AbortSignal.any([init.signal, AbortSignal.timeout(CATALOG_FETCH_TIMEOUT_MS)]))
            if (manifest.rootHex !== job.entry.root) throw new Error(`root ${manifest.rootHex} is not the catalog's ${job.entry.root}`)
            counts.fetched++
            // Not if the catalog has named a newer root meanwhile.
            if (jobs.get(job.entry.id) === job) hold(manifest, job.peerId)
            else manifest = undefined
          }
        } catch (err) {
          manifest = undefined
          if (!init.signal.aborted) {
            counts.failed++
            init.logger.warn('catalog manifest fetch failed', { image: job.entry.id, peer: job.peerId, error: (err as Error).message })
          }
        }
        current = undefined
        // A newer root's job may have taken the id meanwhile.
        if (jobs.get(job.entry.id) === job) jobs.delete(job.entry.id)
        job.resolve(manifest)
      }
    } finally {
      working = false
      current = undefined
      for (const job of queue.splice(0)) { if (jobs.get(job.entry.id) === job) jobs.delete(job.entry.id); job.resolve(undefined) }
    }
  }

  const onCatalog = (peerId: string, entries: CatalogEntry[]): void => {
    counts.received++
    // What this origin no longer serves is not given to a create.
    const listed = new Set(entries.map(e => e.id))
    for (const [imageId, from] of heldFrom) if (from === peerId && !listed.has(imageId)) drop(imageId)
    for (const entry of entries) {
      const holding = held.get(entry.id)
      if (holding !== undefined && holding.rootHex !== entry.root) drop(entry.id) // an older root: not for a create
      if (init.has(entry.id, entry.root) || holding?.rootHex === entry.root) continue
      const job = jobs.get(entry.id)
      if (job !== undefined && job.entry.root === entry.root) continue
      // A newer root of an image queued under an older one replaces it there (the one under way finishes).
      const at = queue.findIndex(j => j.entry.id === entry.id)
      if (at < 0 && queue.length >= MAX_QUEUED_FETCHES) break
      const { promise, resolve } = Promise.withResolvers<Manifest | undefined>()
      const next: Job = { peerId, entry, done: promise, resolve }
      if (at >= 0) { queue[at].resolve(undefined); queue[at] = next } else queue.push(next)
      jobs.set(entry.id, next)
    }
    void work()
  }

  /** Gossip validation: a well-formed catalog from a trusted origin; anyone else's is ignored (not forwarded). */
  const validate = (_from: PeerId, message: { type?: string, from?: PeerId, data: Uint8Array }): TopicValidatorResult => {
    if (message.type !== 'signed' || message.from === undefined || !init.origins.has(message.from.toString())) {
      counts.ignored++
      return TopicValidatorResult.Ignore
    }
    try {
      decodeCatalog(message.data)
      return TopicValidatorResult.Accept
    } catch {
      return TopicValidatorResult.Reject
    }
  }

  const onMessage = (event: CustomEvent<{ topic: string, type?: string, from?: PeerId, data: Uint8Array }>): void => {
    const message = event.detail
    if (message.topic !== CATALOG_TOPIC || init.maxManifests <= 0) return
    if (message.type !== 'signed' || message.from === undefined || !init.origins.has(message.from.toString())) return
    try {
      onCatalog(message.from.toString(), decodeCatalog(message.data))
    } catch (err) {
      init.logger.warn('catalog message dropped', { error: (err as Error).message })
    }
  }

  const publishNow = (): void => {
    publishPending = false
    lastPublishMs = init.clock.nowMs()
    const entries = init.ownImages()
    // An agent that never had images says nothing; one whose last image went says so (an empty catalog).
    if (!started || (entries.length === 0 && !announced)) return
    announced = entries.length > 0
    init.pubsub().publish(CATALOG_TOPIC, encodeCatalog(entries)).catch((err: Error) => {
      // No subscribed peer yet is not a failure: a peer that subscribes later triggers a publish.
      if (!/NoPeersSubscribedToTopic|no peers/i.test(err.message)) init.logger.warn('catalog publish failed', { error: err.message })
    })
  }

  return {
    start: () => {
      if (started) return
      started = true
      const pubsub = init.pubsub()
      pubsub.topicValidators.set(CATALOG_TOPIC, validate as any)
      pubsub.addEventListener('message', onMessage)
      pubsub.subscribe(CATALOG_TOPIC)
    },
    stop: () => {
      if (!started) return
      started = false
      const pubsub = init.pubsub()
      pubsub.removeEventListener('message', onMessage)
      pubsub.topicValidators.delete(CATALOG_TOPIC)
      pubsub.unsubscribe(CATALOG_TOPIC)
      for (const job of queue.splice(0)) { jobs.delete(job.entry.id); job.resolve(undefined) }
    },
    publishSoon: () => {
      if (publishPending || !started) return
      publishPending = true
      const waitMs = Math.max(0, lastPublishMs + CATALOG_PUBLISH_MIN_INTERVAL_MS - init.clock.nowMs())
      init.clock.sleep(waitMs, init.signal).then(publishNow, () => { publishPending = false })
    },
    take: async (imageId, signal) => {
      let manifest = held.get(imageId)
      if (manifest === undefined) {
        const job = current
        if (job === undefined || job.entry.id !== imageId) return undefined
        const { promise, resolve } = Promise.withResolvers<undefined>()
        const onAbort = (): void => { resolve(undefined) }
        signal.addEventListener('abort', onAbort, { once: true })
        const waited = new AbortController()
        init.clock.sleep(TAKE_WAIT_MS, waited.signal).then(onAbort, () => {})
        try {
          manifest = await Promise.race([job.done, promise])
        } finally {
          waited.abort()
          signal.removeEventListener('abort', onAbort)
        }
        signal.throwIfAborted()
        if (manifest === undefined || held.get(imageId) !== manifest) return undefined
      }
      drop(imageId)
      counts.used++
      return manifest
    },
    stats: () => ({ ...counts, held: held.size })
  }
}
