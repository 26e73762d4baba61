// The one place that wires everything: identity, metadata (level), image registry and block caches, the NBD
// server, per-VM snapshots, the peer layer and the JSON-RPC socket. Layers below know nothing of each other
// beyond the interfaces in src/blockstack/types.ts.

import { mkdir } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { Level } from 'level'
import type { Config } from '../../config/defaults.js'
import { loadOrCreateIdentity, parsePublicKey, type Identity } from '../identity/key.js'
import { ImageRegistry, type Image, type ImageRecord } from '../blockstack/images.js'
import { SnapshotStore } from '../blockstack/snapshots.js'
import { fileBlockSource } from '../blockstack/file-source.js'
import { createNbdServer, BufferPool, type NbdServer } from '../blockstack/nbd/index.js'
import { cacheExport } from '../blockstack/cache-export.js'
import type { BlockSource, ExportProvider, NbdExport } from '../blockstack/types.js'
import type { BufferReleasingExport } from '../blockstack/nbd/buffer-pool.js'
import type { Manifest } from '../blockstack/manifest.js'
import type { BlockCache } from '../blockstack/cache.js'
import { RpcServer } from '../rpc/server.js'
import { createMethods } from './methods.js'
import type { DaemonLogger } from './logger.js'
import { PrefetchManager } from './prefetch-manager.js'

export class ManifestUnavailableError extends Error {
  override name = 'ManifestUnavailableError'
}

export class DataDirLockedError extends Error {
  override name = 'DataDirLockedError'
}

/** What the daemon needs of the peer layer (src/p2p implements it). */
export interface PeerLayer {
  readonly blockSource: BlockSource
  start: () => Promise<void>
  stop: () => Promise<void>
  addImage: (cache: BlockCache, options?: { childLimit?: number }) => void
  removeImage: (imageId: string) => void
  fetchManifest: (imageId: string, options: { signal: AbortSignal }) => Promise<Manifest>
  status: () => Record<string, any>
  /** The image's boot profile (or how many VMs of it this host boots) changed: advertise it now. */
  profileChanged?: (imageId: string) => void
  /** Peers that advertise they are booting the image now. */
  peersBooting?: (imageId: string) => number
}

/** Boot profiles for the peer layer: advertised, served, and adopted from peers (PrefetchManager). */
export interface PeerProfiles {
  local: (imageId: string) => { version: string, boots: number, bytes: Uint8Array } | undefined
  adopt: (imageId: string, bytes: Uint8Array) => Promise<boolean>
  /** Swarm read-ahead (src/p2p/profile-protocol.ts ProfileProvider). */
  booting?: (imageId: string) => number
  live?: (imageId: string) => Uint8Array | undefined
  adoptLive?: (imageId: string, bytes: Uint8Array) => boolean
  wantsLive?: (imageId: string) => boolean
}

export interface PeerLayerFactory {
  (args: { config: Config, identity: Identity, trustedKeys: Uint8Array[], logger: DaemonLogger, profiles?: PeerProfiles }): Promise<PeerLayer>
}


/** A source with no peers: the image is on this host only. */
const NO_PEERS_SOURCE: BlockSource = {
  async fetch (manifest) {
    throw new ManifestUnavailableError(`no peer can supply blocks of ${manifest.imageId}: the peer layer is off`)
  }
}

/** Tries `first`; blocks it cannot supply come from `second`. */
function fallbackSource (first: BlockSource, second: BlockSource): BlockSource {
  return {
    async fetch (manifest, indexes, options) {
      try {
        return await first.fetch(manifest, indexes, options)
      } catch (err) {
        options.signal.throwIfAborted()
        return await second.fetch(manifest, indexes, options)
      }
    },
    reportCorrupt (manifest, index, peer) {
      if (peer === 'file') return
      second.reportCorrupt?.(manifest, index, peer)
    }
  }
}

export interface DaemonOptions {
  logger: DaemonLogger
  peerLayer?: PeerLayerFactory
}

export class Daemon {
  readonly startedAtMs = Date.now()
  private heartbeatTimer: NodeJS.Timeout | undefined
  private readonly fileSources: Array<{ close: () => Promise<void> }> = []
  private constructor (
    readonly config: Config,
    readonly identity: Identity,
    readonly db: Level<string, any>,
    readonly images: ImageRegistry,
    readonly snapshots: SnapshotStore,
    readonly nbd: NbdServer,
    readonly rpc: RpcServer,
    readonly peers: PeerLayer | undefined,
    readonly prefetch: PrefetchManager,
    readonly trustedKeys: Uint8Array[],
    readonly logger: DaemonLogger
  ) {}

  nbdUri (imageId: string): string {
    return `nbd+unix:///${imageId}?socket=${this.config.nbd.socket}`
  }

  static async start (config: Config, options: DaemonOptions): Promise<Daemon> {
    const logger = options.logger
    await mkdir(config.dataDir, { recursive: true, mode: 0o700 })
    await mkdir(dirname(config.socket), { recursive: true })
    await mkdir(dirname(config.nbd.socket), { recursive: true })
    const identity = await loadOrCreateIdentity(config.dataDir)
    const trustedKeys = [identity.publicKey, ...config.p2p.trust.map(parsePublicKey)]
    const db = new Level<string, any>(join(config.dataDir, 'meta'), { valueEncoding: 'json' })
    try {
      await db.open()
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause
      if (cause?.code === 'LEVEL_LOCKED' || (err as { code?: string }).code === 'LEVEL_LOCKED') {
        throw new DataDirLockedError(`${config.dataDir} is in use by another vmthunderd`)
      }
      throw err
    }
    const cleanups: Array<() => Promise<void>> = [async () => { await db.close() }]
    try {
      // The prefetch manager is made after the peer layer, which needs its profiles: late-bound.
      const prefetchRef: { manager?: PrefetchManager } = {}
      const profiles: PeerProfiles = {
        local: imageId => prefetchRef.manager?.localProfile(imageId),
        adopt: async (imageId, bytes) => await (prefetchRef.manager?.adoptPeerProfile(imageId, bytes) ?? Promise.resolve(false)),
        booting: imageId => prefetchRef.manager?.booting(imageId) ?? 0,
        live: imageId => prefetchRef.manager?.liveProfile(imageId),
        adoptLive: (imageId, bytes) => prefetchRef.manager?.adoptLiveProfile(imageId, bytes) ?? false,
        wantsLive: imageId => prefetchRef.manager?.wantsLiveProfile(imageId) ?? false
      }
      const peers = config.p2p.enabled && options.peerLayer !== undefined
        ? await options.peerLayer({ config, identity, trustedKeys, logger: logger.child('p2p'), profiles })
        : undefined
      const peerSource = peers?.blockSource ?? NO_PEERS_SOURCE
      const fileSources: Array<{ close: () => Promise<void> }> = []
      const sourceFor = (record: ImageRecord): BlockSource => {
        if (!record.origin || record.sourcePath === undefined) return peerSource
        const file = fileBlockSource(record.sourcePath)
        fileSources.push(file)
        return fallbackSource(file, peerSource)
      }
      const images = await ImageRegistry.open({
        dataDir: config.dataDir,
        db,
        key: identity,
        sourceFor,
        logger: logger.child('cache'),
        fetchTimeoutMs: config.cache.fetchTimeoutMs
      })
      cleanups.unshift(async () => { await images.close() })
      const snapshots = await SnapshotStore.open({
        instancesDir: config.instancesDir,
        db: db.sublevel('instances', { valueEncoding: 'json' }),
        backingUri: imageId => `nbd+unix:///${imageId}?socket=${config.nbd.socket}`
      })
      const prefetch = new PrefetchManager({
        db: db.sublevel('profiles', { valueEncoding: 'view' }) as any,
        logger: logger.child('prefetch'),
        enabled: config.prefetch.enabled,
        rateBytesPerSec: config.prefetch.rateLimitBytesPerSec,
        idleLinkFraction: config.prefetch.idleLinkFraction,
        linkBytesPerSec: config.p2p.downloadLimitBytesPerSec ?? 125_000_000,
        recordingQuietMs: config.prefetch.recordingQuietMs,
        quotaBytes: config.cache.quotaBytes,
        openInstances: imageId => snapshots.usersOf(imageId).length,
        onProfileChanged: imageId => { peers?.profileChanged?.(imageId) },
        peersBooting: imageId => peers?.peersBooting?.(imageId) ?? 0
      })
      prefetchRef.manager = prefetch
      cleanups.unshift(async () => { await prefetch.stop() })
      for (const image of images.list()) await prefetch.attach(image)
      const nbd = createNbdServer({ provider: exportProvider(images, prefetch), logger: logger.child('nbd'), maxConnections: config.nbd.maxConnections })
      cleanups.unshift(async () => { await nbd.close() })
      await nbd.listenUnix(config.nbd.socket)
      if (config.nbd.tcp !== null) {
        const at = config.nbd.tcp.lastIndexOf(':')
        await nbd.listenTcp(config.nbd.tcp.slice(0, at).replace(/^\[|\]$/g, ''), Number(config.nbd.tcp.slice(at + 1)))
      }
      const holder: { daemon?: Daemon } = {}
      const rpc = new RpcServer({
        methods: createMethods(() => {
          if (holder.daemon === undefined) throw new Error('daemon is starting')
          return holder.daemon
        }),
        maxRequestBytes: config.rpc.maxRequestBytes,
        maxConnections: config.rpc.maxConnections,
        maxBatchLength: config.rpc.maxBatchLength,
        onError: (message, fields) => logger.error(message, fields)
      })
      const daemon = new Daemon(config, identity, db, images, snapshots, nbd, rpc, peers, prefetch, trustedKeys, logger)
      daemon.fileSources.push(...fileSources)
      holder.daemon = daemon
      if (peers !== undefined) {
        cleanups.unshift(async () => { await peers.stop() })
        await peers.start()
        for (const image of images.list()) peers.addImage(image.cache, image.record.origin ? { childLimit: config.p2p.originChildLimit } : {})
      }
      await rpc.listen(config.socket)
      daemon.heartbeatTimer = setInterval(() => {
        prefetch.heartbeat().catch(err => logger.warn('prefetch heartbeat failed', { error: err }))
      }, 1000)
      daemon.heartbeatTimer.unref()
      logger.info('vmthunderd started', {
        peerId: identity.peerId,
        socket: config.socket,
        nbdSocket: config.nbd.socket,
        images: images.list().length,
        instances: snapshots.list().length
      })
      return daemon
    } catch (err) {
      for (const cleanup of cleanups) await cleanup().catch(() => {})
      throw err
    }
  }

  /** The image, fetching its manifest from peers when this host does not know it yet. */
  async acquireImage (imageId: string, signal: AbortSignal): Promise<Image> {
    const known = this.images.get(imageId)
    if (known !== undefined) return known
    if (this.peers === undefined) throw new ManifestUnavailableError(`no image '${imageId}' here, and the peer layer is off`)
    const manifest = await this.peers.fetchManifest(imageId, { signal })
    const image = await this.images.adopt(manifest)
    await this.attachImage(image)
    return image
  }

  /** A new image on this host: serve it to peers, prefetch it, learn its boots. */
  async attachImage (image: Image): Promise<void> {
    this.peers?.addImage(image.cache, image.record.origin ? { childLimit: this.config.p2p.originChildLimit } : {})
    await this.prefetch.attach(image)
  }

  async detachImage (imageId: string): Promise<void> {
    this.peers?.removeImage(imageId)
    await this.prefetch.detach(imageId)
  }

  async stop (): Promise<void> {
    this.logger.info('vmthunderd stopping')
    clearInterval(this.heartbeatTimer)
    await this.rpc.close()
    await this.nbd.close()
    await this.prefetch.stop().catch(err => this.logger.warn('prefetch stop failed', { error: err }))
    if (this.peers !== undefined) await this.peers.stop().catch(err => this.logger.warn('peer layer stop failed', { error: err }))
    await this.images.close()
    for (const file of this.fileSources) await file.close().catch(() => {})
    await this.db.close()
    this.logger.info('vmthunderd stopped')
  }
}

/**
 * One read-only NBD export per image, reading through its block cache. get() runs once per connection, so
 * the prefetcher can tell one VM's reads from another's.
 */
function exportProvider (images: ImageRegistry, prefetch: PrefetchManager): ExportProvider {
  const pool = new BufferPool()
  return {
    list: () => images.list().map(image => image.record.imageId),
    get: (name: string): (NbdExport & BufferReleasingExport) | undefined => {
      const image = images.get(name)
      if (image === undefined) return undefined
      const base = cacheExport(name, image.cache, pool)
      return { ...prefetch.wrapExport(name, base), releaseBuffer: base.releaseBuffer }
    }
  }
}
