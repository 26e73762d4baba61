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
import { assertWritableDir } from '../blockstack/disk-check.js'
import type { BlockSource, ExportProvider, NbdExport } from '../blockstack/types.js'
import type { BufferReleasingExport } from '../blockstack/nbd/buffer-pool.js'
import type { Manifest } from '../blockstack/manifest.js'
import type { BlockCache } from '../blockstack/cache.js'
import { RpcServer } from '../rpc/server.js'
import { createMethods } from './methods.js'
import type { DaemonLogger } from './logger.js'
import { ConfigError } from '../config.js'
import { PrefetchManager } from './prefetch-manager.js'
import { tapManifestFailures, isTrustFailure, type ManifestFailures } from './manifest-failures.js'
import { UntrustedOriginError } from '../blockstack/errors.js'
import { ErrorCounts, countingLogger } from '../metrics/error-count.js'
// Loaded only when metrics are on (prom-client is not free to load).
import type { AgentMetrics } from '../metrics/metrics.js'
import type { MetricsServer } from '../metrics/server.js'
import { timedExport } from '../metrics/read-latency.js'
import type { NodeStatus } from '../rpc/types.js'
import type { P2PNode } from '../p2p/node.js'
import { createPreheat, type Preheat, type PreheatPubsub } from '../p2p/preheat.js'
import { preheatMethods } from './preheat-methods.js'
import { createBeat, type Beat, type BeatTimer } from '../beat.js'

/** Reported by node.status and the metrics' build info. */
export const DAEMON_VERSION = '0.1.0'

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
  /** The started libp2p node, for modules with their own gossip topics (cluster preheat). */
  node?: () => P2PNode
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
  (args: { config: Config, identity: Identity, trustedKeys: Uint8Array[], logger: DaemonLogger, profiles?: PeerProfiles, beat?: Beat }): Promise<PeerLayer>
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
  /** Once-a-second work (src/beat.ts): the prefetch manager's heartbeat here, the peer layer's in it. */
  private beat: BeatTimer | undefined
  private metricsServer: MetricsServer | undefined
  /** Cluster preheat over gossip; undefined with the peer layer off. */
  preheat: Preheat | undefined
  private readonly fileSources: Array<{ close: () => Promise<void> }> = []
  private manifestFailures: ManifestFailures | undefined
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
    // Every logged error is counted by class, for the metrics.
    const errorCounts = new ErrorCounts()
    const logger = countingLogger(options.logger, errorCounts)
    await mkdir(config.dataDir, { recursive: true, mode: 0o700 }).catch(async err => {
      await assertWritableDir(dirname(config.dataDir), 'parent of the data dir')
      throw err
    })
    await assertWritableDir(config.dataDir)
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
    // Beating from now: the peer layer puts gossipsub on it as it starts.
    const beat = createBeat({ onError: err => { logger.warn('beat task failed', { error: err }) } })
    beat.start()
    cleanups.unshift(async () => { beat.stop() })
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
      const manifestFailures = tapManifestFailures(logger.child('p2p'))
      const peers = config.p2p.enabled && options.peerLayer !== undefined
        ? await options.peerLayer({ config, identity, trustedKeys, logger: manifestFailures.logger, profiles, beat })
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
        fetchTimeoutMs: config.cache.fetchTimeoutMs,
        trustedKeys
      })
      cleanups.unshift(async () => { await images.close() })
      const snapshots = await SnapshotStore.open({
        instancesDir: config.instancesDir,
        db: db.sublevel('instances', { valueEncoding: 'json' }),
        backingUri: imageId => `nbd+unix:///${imageId}?socket=${config.nbd.socket}`
      })
      await dropUntrustedImages(images, snapshots, logger)
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
      const holder: { daemon?: Daemon } = {}
      const getDaemon = (): Daemon => {
        if (holder.daemon === undefined) throw new Error('daemon is starting')
        return holder.daemon
      }
      const methods = { ...createMethods(getDaemon), ...preheatMethods(getDaemon) }
      const metrics = config.metrics.listen === null
        ? undefined
        : (await import('../metrics/metrics.js')).createAgentMetrics({
          status: async () => await methods['node.status']({}, { signal: AbortSignal.timeout(10_000) }) as NodeStatus,
          cacheBytes: () => prefetch.usedBytes(),
          quotaBytes: config.cache.quotaBytes,
          errors: errorCounts,
          version: DAEMON_VERSION
        })
      const nbd = createNbdServer({ provider: exportProvider(images, prefetch, metrics), logger: logger.child('nbd'), maxConnections: config.nbd.maxConnections })
      cleanups.unshift(async () => { await nbd.close() })
      await nbd.listenUnix(config.nbd.socket)
      if (config.nbd.tcp !== null) {
        const at = config.nbd.tcp.lastIndexOf(':')
        await nbd.listenTcp(config.nbd.tcp.slice(0, at).replace(/^\[|\]$/g, ''), Number(config.nbd.tcp.slice(at + 1)))
      }
      const rpc = new RpcServer({
        methods,
        maxRequestBytes: config.rpc.maxRequestBytes,
        maxConnections: config.rpc.maxConnections,
        maxBatchLength: config.rpc.maxBatchLength,
        onError: (message, fields) => logger.error(message, fields)
      })
      const daemon = new Daemon(config, identity, db, images, snapshots, nbd, rpc, peers, prefetch, trustedKeys, logger)
      daemon.fileSources.push(...fileSources)
      daemon.manifestFailures = manifestFailures
      holder.daemon = daemon
      if (peers !== undefined) {
        cleanups.unshift(async () => { await peers.stop() })
        await peers.start()
        for (const image of images.list()) peers.addImage(image.cache, image.record.origin ? { childLimit: config.p2p.originChildLimit } : {})
        const node = peers.node
        if (node !== undefined) {
          daemon.preheat = createPreheat({
            pubsub: () => node().services.pubsub as unknown as PreheatPubsub,
            identity,
            trustedKeys,
            acquire: async (imageId, signal) => {
              const image = await daemon.acquireImage(imageId, signal)
              const { blockCount } = image.manifest
              return { rootHex: image.manifest.rootHex, sizeBytes: image.manifest.sizeBytes, heldFraction: () => image.cache.presentCount() / blockCount }
            },
            logger: logger.child('preheat')
          })
          daemon.preheat.start()
          cleanups.unshift(async () => { await daemon.preheat?.stop() })
        }
      }
      await rpc.listen(config.socket)
      if (metrics !== undefined && config.metrics.listen !== null) {
        const { startMetricsServer } = await import('../metrics/server.js')
        daemon.metricsServer = await startMetricsServer(metrics, config.metrics.listen, (message, fields) => logger.error(message, fields))
        cleanups.unshift(async () => { await daemon.metricsServer?.close() })
      }
      daemon.beat = beat
      beat.add(() => { prefetch.heartbeat().catch(err => logger.warn('prefetch heartbeat failed', { error: err })) })
      logger.info('vmthunderd started', {
        peerId: identity.peerId,
        socket: config.socket,
        nbdSocket: config.nbd.socket,
        images: images.list().length,
        instances: snapshots.list().length,
        metrics: daemon.metricsServer === undefined ? null : `http://${daemon.metricsServer.address}/metrics`,
        // bin/v8-flags.js's AGENT_ENV: without it (node run by hand on the bundle) a boot costs more page faults.
        mallocHugePages: /(^|:)glibc\.malloc\.hugetlb=1/.test(process.env.GLIBC_TUNABLES ?? '')
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
    const { manifest, fetchMs } = await this.fetchManifest(imageId, signal)
    return await this.adoptFetched(manifest, fetchMs)
  }

  /** An image's manifest from peers, checked against the trusted origin keys (1040/1041 when none comes in time). */
  async fetchManifest (imageId: string, signal: AbortSignal): Promise<{ manifest: Manifest, fetchMs: number }> {
    if (this.peers === undefined) throw new ManifestUnavailableError(`no image '${imageId}' here, and the peer layer is off`)
    const peers = this.peers
    const startMs = performance.now()
    const timeoutMs = this.config.p2p.manifestTimeoutMs
    const deadline = new AbortController()
    // The reason is read when the deadline passes, before the peer layer drops its interest in the image.
    let why: Error | undefined
    const timer = setTimeout(() => { why = this.manifestFailure(imageId, peers, timeoutMs); deadline.abort(why) }, timeoutMs)
    this.manifestFailures?.forget(imageId)
    let manifest: Manifest
    try {
      manifest = await peers.fetchManifest(imageId, { signal: AbortSignal.any([signal, deadline.signal]) })
    } catch (err) {
      if (why !== undefined && !signal.aborted) throw why
      throw err
    } finally {
      clearTimeout(timer)
    }
    return { manifest, fetchMs: performance.now() - startMs }
  }

  /** Installs and attaches an image whose manifest fetchManifest() returned. */
  async adoptFetched (manifest: Manifest, fetchMs: number): Promise<Image> {
    const { image, attached } = await this.installFetched(manifest, fetchMs)
    await attached
    return image
  }

  /**
   * Installs an image whose manifest fetchManifest() returned, and starts its attach (peers, prefetch) in the
   * next turn of the event loop: `attached` settles when that has. What a VM's disk needs is the install; a
   * caller that answers a client first (instance.create) does not wait for the attach, whose gossip, admissions
   * and stored-profile read would otherwise run before its answer on a loaded host. A read that comes before the
   * attach waits for a source as any read does.
   */
  async installFetched (manifest: Manifest, fetchMs: number): Promise<{ image: Image, attached: Promise<void> }> {
    const startMs = performance.now()
    // Its stored boot profile (rarely any, for a new image) is read while the image is installed: one LevelDB
    // round trip less on a new image's first create.
    const stored = this.prefetch.storedProfile(manifest.imageId)
    stored.catch(() => {}) // awaited by attach; if the install fails first, nothing waits for it
    const image = await this.images.adopt(manifest)
    const installMs = performance.now() - startMs
    // Instances and exports find its prefetch state at once; the prefetcher itself starts with the attach.
    this.prefetch.register(image)
    const attached = new Promise<void>(resolve => setImmediate(resolve)).then(async () => {
      await this.attachImage(image, stored)
      this.logger.info('image adopted', { image: manifest.imageId, manifestMs: Math.round(fetchMs), installMs: Math.round(installMs), attachMs: Math.round(performance.now() - startMs) })
    })
    return { image, attached }
  }

  /** Why no manifest of `imageId` came in time: untrusted origin (1040), or no peer with it (1041). */
  private manifestFailure (imageId: string, peers: PeerLayer, timeoutMs: number): Error {
    const last = this.manifestFailures?.last(imageId)
    const within = `in ${timeoutMs} ms`
    if (last !== undefined && isTrustFailure(last)) {
      return new UntrustedOriginError(`no trusted manifest of '${imageId}' ${within}: ${last} (add the origin's key with --trust or p2p.trust)`)
    }
    if (last !== undefined) return new ManifestUnavailableError(`no valid manifest of '${imageId}' ${within}: ${last}`)
    const connected = (peers.status().peers as unknown[] | undefined)?.length ?? 0
    if (connected === 0) {
      return new ManifestUnavailableError(`no manifest of '${imageId}' ${within}: no peer is connected (check --bootstrap, and that --psk holds the network's key)`)
    }
    return new ManifestUnavailableError(`no manifest of '${imageId}' ${within}: none of ${connected} connected peer(s) offers it (is it registered on its origin?)`)
  }

  /** A new image on this host: serve it to peers, prefetch it, learn its boots. */
  async attachImage (image: Image, storedProfile?: Promise<Uint8Array | undefined>): Promise<void> {
    this.peers?.addImage(image.cache, image.record.origin ? { childLimit: this.config.p2p.originChildLimit } : {})
    await this.prefetch.attach(image, storedProfile)
  }

  async detachImage (imageId: string): Promise<void> {
    this.peers?.removeImage(imageId)
    await this.prefetch.detach(imageId)
  }

  async stop (): Promise<void> {
    this.logger.info('vmthunderd stopping')
    this.beat?.stop()
    await this.preheat?.stop()
    await this.rpc.close()
    await this.metricsServer?.close()
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
function exportProvider (images: ImageRegistry, prefetch: PrefetchManager, metrics: AgentMetrics | undefined): ExportProvider {
  const pool = new BufferPool()
  return {
    list: () => images.list().map(image => image.record.imageId),
    get: (name: string): (NbdExport & BufferReleasingExport) | undefined => {
      const image = images.get(name)
      if (image === undefined) return undefined
      const base = cacheExport(name, image.cache, pool)
      const exp = { ...prefetch.wrapExport(name, base), releaseBuffer: base.releaseBuffer }
      return metrics === undefined ? exp : timedExport(exp, metrics.readLatency)
    }
  }
}

/**
 * Images adopted from an origin whose key is no longer in p2p.trust are not served: one that no instance uses
 * is deleted (its blocks are fetched again if the key is trusted again); one that instances use stops the
 * start with a ConfigError (exit code 2), since deleting it would break those VMs' disks and serving it would
 * serve what this configuration no longer trusts.
 */
async function dropUntrustedImages (images: ImageRegistry, snapshots: SnapshotStore, logger: DaemonLogger): Promise<void> {
  for (const { imageId, originKeyHex } of images.untrusted()) {
    const users = snapshots.usersOf(imageId)
    if (users.length > 0) {
      throw new ConfigError(`image '${imageId}' is signed by origin key ${originKeyHex}, which p2p.trust no longer holds, ` +
        `and instance(s) ${users.join(', ')} use it: trust the key again (--trust or p2p.trust), or destroy those instances with it trusted`)
    }
    logger.warn('dropping an image whose origin is not trusted any more', { imageId, originKey: originKeyHex })
    await images.dropUntrusted(imageId)
  }
}
