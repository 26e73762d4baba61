// Wires src/prefetch into the daemon: one prefetcher per image this host does not yet hold whole, one boot
// recorder per VM connection, the image's learned boot profile (kept in level, shared with peers), and the
// cache quota (evicts blocks of images no instance here uses, least recently used first).
//
// Attribution: reads arrive on NBD connections, and QEMU opens one connection per drive, so a connection is a
// VM. `instance.create` queues the instance name on its image; the next new connection of that image that
// reads takes the oldest queued name. Only such connections are recorded into the profile (an nbdcopy or a
// qemu-img compare is not a boot). A recording ends when the connection has been quiet for a while, or when
// its instance is destroyed.
//
// Prefetch: read-ahead starts at instance.create (profile order, before the VM's first read) and follows the
// VM's reads; idle prefetch pulls the rest when no on-demand read waits (the prefetcher polls the cache's
// pending demand reads, and is woken when one ends). An image whose blocks were evicted keeps no prefetcher
// (it would fetch them back) until an instance of it is created again.
//
// Swarm (one boot wave): this host advertises how many VMs of the image it is booting (`booting`: recordings in
// progress, and instances created but not yet connected); idle prefetch of an image waits while any peer boots
// it (the wave's reads go first, and the whole-image pull comes after, through the tree). While this host
// boots an image it has no learned profile of, it follows the live first-touch order of a booting peer (the
// peer layer fetches it: src/p2p/profile-protocol.ts) and serves its own: whoever is ahead in the wave shows
// the others what comes next. Sequential guesses (read-ahead for reads no profile lists) are for a lone boot
// only: in a wave each host's misses would be guessed for separately and moved through the tree for nothing. A live profile is never stored or advertised as a learned one.

import type { NbdExport } from '../blockstack/types.js'
import type { Image } from '../blockstack/images.js'
import { isZeroBlock } from '../blockstack/manifest.js'
import { popcount } from '../blockstack/bitmap.js'
import type { PunchHole } from '../blockstack/cache.js'
import {
  createPrefetcher, createRecorder, mergeProfiles, encodeProfile, decodeProfile, profileToJson, profileFromJson,
  checkProfileFits, chooseEvictions, MAX_PROFILE_BYTES,
  type BootProfile, type Prefetcher, type Recorder, type PrefetchProgress, type EvictionImage, type EvictionPlan
} from '../prefetch/index.js'
import type { DaemonLogger } from './logger.js'

/** A recording ends after this long without reads on its connection (default; see PrefetchManagerInit). */
export const RECORDING_QUIET_MS = 15_000
/** Recordings with fewer first touches than this are not boots (a VM that died early, a probe). */
export const MIN_RECORDING_ENTRIES = 32
/**
 * A recording that has not reached MIN_RECORDING_ENTRIES yet ends after this many times the usual quiet (60 s
 * at the default 15 s): a VM probes
 * its disk, then runs its kernel and initrd before it mounts the root file system (18.4 s without a read in
 * the Debian 12 trace under TCG). Ending it at the usual quiet dropped the recording as "not a boot", so no
 * profile was ever learned from such a boot, and the host stopped advertising that it boots: its peers'
 * idle prefetch then pulled the whole image through the rest of the wave.
 */
export const RECORDING_START_QUIET_FACTOR = 4
/** A recording that touched more than this share of the image is a scan (a copy), not a boot. */
export const MAX_RECORDING_SHARE = 0.5
/** Instances queued for attribution per image, and how long a queued name waits for its VM. */
const MAX_QUEUED_INSTANCES = 64
const QUEUED_INSTANCE_TTL_MS = 10 * 60_000
/**
 * A created instance counts as booting for this long before its VM's first read: a VM opens its disk within
 * seconds of instance.create, and a name nobody connects for must not hold the peers' idle prefetch for long.
 */
const QUEUED_BOOTING_MS = 10_000
/** The live profile served to peers is encoded again at most this often. */
const LIVE_PROFILE_REFRESH_MS = 100
/** Idle prefetch stops when the caches use this share of the quota, and resumes under the lower mark. */
const QUOTA_IDLE_STOP = 0.95
const QUOTA_IDLE_RESUME = 0.9

export interface ProfileDb {
  get: (key: string) => Promise<Uint8Array | undefined>
  put: (key: string, value: Uint8Array) => Promise<void>
  del: (key: string) => Promise<void>
}

export interface PrefetchManagerInit {
  db: ProfileDb
  logger: DaemonLogger
  enabled: boolean
  rateBytesPerSec: number | null
  /** Foreground use of the download link above this fraction makes idle prefetch wait. */
  idleLinkFraction: number
  /** Capacity used to turn fetched bytes into a link utilization. */
  linkBytesPerSec: number
  now?: () => number
  /** Told when an image's profile changes (the peer layer advertises its version), or how many VMs of it boot here (no profile then). */
  onProfileChanged?: (imageId: string, profile?: BootProfile) => void
  /** Peers booting the image now (from their adverts): idle prefetch of the image waits while there are any. */
  peersBooting?: (imageId: string) => number
  /** A recording ends after this long without reads (default RECORDING_QUIET_MS). */
  recordingQuietMs?: number
  /** Disk quota of all caches together; null or absent: none. */
  quotaBytes?: number | null
  /** Instances on this host that use the image (their blocks are never evicted). */
  openInstances?: (imageId: string) => number
  /** Hole punching for eviction (default fallocate). */
  punchHole?: PunchHole
}

interface Recording {
  instance: string
  recorder: Recorder
  lastReadMs: number
}

interface ImageState {
  image: Image
  profile?: BootProfile
  /** The profile's binary form (what peers fetch), kept with it. */
  profileBytes?: Uint8Array
  prefetcher?: Prefetcher
  /** Progress of the last prefetcher retired (image complete, or stopped for eviction). */
  lastProgress?: PrefetchProgress
  /** Blocks were evicted: no prefetcher until an instance of the image is created. */
  evictedHold: boolean
  evictedBlocks: number
  queued: Array<{ name: string, atMs: number }>
  recordings: Set<Recording>
  lastDemandBytes: number
  lastSampleMs: number
  /** Per block: last use (seconds since the manager started, +1; 0 never), for LRU eviction. */
  lastUse: Uint32Array
  zeroBlocks: number
  readsLocal: number
  readsFetched: number
  unsubscribe?: () => void
  /** A booting peer's live profile that read-ahead follows (while there is no learned profile). */
  liveProfile?: BootProfile
  /** This host's live profile as last served: encoded at most every LIVE_PROFILE_REFRESH_MS. */
  liveServed?: { atMs: number, entries: number, bytes: Uint8Array }
  /** The booting count last told to the peer layer. */
  bootingAdvertised: number
  /** attach() has begun (register() alone makes the state, so that instances and exports find it). */
  attaching: boolean
}

export interface ImagePrefetchStatus extends PrefetchProgress {
  profileBoots: number
  profileEntries: number
  profileVersion: string | null
  /** Reads of VMs and other NBD clients that found every block local, and those that waited for a fetch. */
  readsLocal: number
  readsFetched: number
  /** Bytes prefetch brought into the cache since the daemon started (all prefetchers of the image). */
  prefetchedBytes: number
  evictedBlocks: number
  /** VMs of the image booting here now (advertised), and entries of the live profile read-ahead follows (0: none). */
  booting: number
  liveProfileEntries: number
  /** Peers that advertise they boot the image now: idle prefetch waits while this is above 0. */
  peersBooting: number
}

/** Bytes fetched for reads (not by prefetch): the link use the prefetcher yields to. */
function demandBytesOf (cache: { stats: () => { fetchedBytes: number, prefetchedBytes: number } }): number {
  const stats = cache.stats()
  return stats.fetchedBytes - stats.prefetchedBytes
}

export class PrefetchManager {
  private readonly images = new Map<string, ImageState>()
  private readonly now: () => number
  private readonly startedMs: number
  private nextConnection = 1
  private idleAllowed = true
  private evicting = false

  constructor (private readonly init: PrefetchManagerInit) {
    this.now = init.now ?? Date.now
    this.startedMs = this.now()
  }

  private useStamp (): number {
    return Math.max(1, Math.floor((this.now() - this.startedMs) / 1000) + 1)
  }

  /** The stored profile of an image (binary form), if any: attach() reads it; a caller may start it earlier. */
  async storedProfile (imageId: string): Promise<Uint8Array | undefined> {
    return await this.init.db.get(imageId)
  }

  /**
   * The image's state without its prefetcher: instances created and NBD exports opened before attach() ends
   * are counted and recorded as after it (a new image's instance.create answers before the attach, daemon.ts
   * installFetched). Idempotent.
   */
  register (image: Image): ImageState {
    const imageId = image.record.imageId
    const existing = this.images.get(imageId)
    if (existing !== undefined) return existing
    const manifest = image.manifest
    const state: ImageState = {
      image,
      queued: [],
      recordings: new Set(),
      lastDemandBytes: 0,
      lastSampleMs: this.now(),
      evictedHold: false,
      evictedBlocks: 0,
      lastUse: new Uint32Array(manifest.blockCount),
      zeroBlocks: popcount(manifest.zeroBlocks),
      readsLocal: 0,
      readsFetched: 0,
      bootingAdvertised: 0,
      attaching: false
    }
    this.images.set(imageId, state)
    // Blocks arriving count as used now: a new block is not the first to go.
    state.unsubscribe = image.cache.onBlocksAdded(blocks => {
      const stamp = this.useStamp()
      for (const b of blocks) state.lastUse[b] = stamp
    })
    return state
  }

  /**
   * Starts prefetching an image and learning its boots. `stored`: storedProfile(imageId), when the caller started
   * reading it while the image was being installed.
   */
  async attach (image: Image, stored?: Promise<Uint8Array | undefined>): Promise<void> {
    const imageId = image.record.imageId
    const state = this.register(image)
    if (state.attaching) return
    state.attaching = true
    const manifest = image.manifest
    const bytes = await (stored ?? this.storedProfile(imageId))
    if (bytes !== undefined) {
      try {
        state.profile = decodeProfile(bytes, { expect: manifest })
        state.profileBytes = bytes
      } catch (err) {
        this.init.logger.warn('dropping a stored profile that does not fit', { imageId, error: err })
        await this.init.db.del(imageId)
      }
    }
    this.startPrefetcher(state)
    // Instances created since register() (before the prefetcher existed) start their read-ahead now.
    for (const q of state.queued) state.prefetcher?.instanceStarted(q.name)
  }

  private startPrefetcher (state: ImageState): void {
    const cache = state.image.cache
    if (!this.init.enabled || state.prefetcher !== undefined || state.evictedHold || cache.isComplete()) return
    const prefetcher = createPrefetcher({
      store: {
        has: i => cache.hasLocal(i),
        blockCount: state.image.manifest.blockCount,
        blockSizeBytes: state.image.manifest.blockSizeBytes,
        rootHex: state.image.manifest.rootHex,
        presentCount: () => cache.presentCount(),
        isZero: i => isZeroBlock(state.image.manifest, i)
      },
      fetch: async (blocks, options) => { await cache.ensure(blocks, options) },
      profile: state.profile ?? state.liveProfile,
      pendingOnDemand: () => cache.pendingDemandReads(),
      rateBytesPerSec: this.init.rateBytesPerSec ?? undefined,
      idle: { busyAbove: Math.min(1, this.init.idleLinkFraction + 0.1), idleBelow: this.init.idleLinkFraction },
      idleEnabled: this.idleAllowed,
      // The wave's reads first: the whole-image pull waits until no peer boots the image.
      idleGate: () => (this.init.peersBooting?.(state.image.record.imageId) ?? 0) === 0,
      // Sequential guesses only for a lone boot: in a wave the peers' live profiles say what comes next.
      sequentialGate: () => (this.init.peersBooting?.(state.image.record.imageId) ?? 0) === 0
    })
    state.prefetcher = prefetcher
    // Its link-use samples start now (the heartbeat samples only images with a prefetcher).
    state.lastDemandBytes = demandBytesOf(cache)
    state.lastSampleMs = this.now()
    prefetcher.start()
  }

  private async retirePrefetcher (state: ImageState): Promise<void> {
    const prefetcher = state.prefetcher
    if (prefetcher === undefined) return
    state.prefetcher = undefined
    await prefetcher.stop()
    state.lastProgress = prefetcher.progress()
  }

  async detach (imageId: string): Promise<void> {
    const state = this.images.get(imageId)
    if (state === undefined) return
    this.images.delete(imageId)
    state.unsubscribe?.()
    await state.prefetcher?.stop()
  }

  instanceCreated (name: string, imageId: string): void {
    const state = this.images.get(imageId)
    if (state === undefined) return
    const nowMs = this.now()
    state.queued = state.queued.filter(q => nowMs - q.atMs < QUEUED_INSTANCE_TTL_MS).slice(-(MAX_QUEUED_INSTANCES - 1))
    state.queued.push({ name, atMs: nowMs })
    // An instance pins the image: a prefetcher held back by eviction may run again.
    if (state.evictedHold) {
      state.evictedHold = false
      this.startPrefetcher(state)
    }
    // Read-ahead from the start of the profile, before the VM's first read arrives.
    state.prefetcher?.instanceStarted(name)
    this.refreshBooting(imageId, state)
  }

  instanceDestroyed (name: string, imageId: string): void {
    const state = this.images.get(imageId)
    if (state === undefined) return
    state.queued = state.queued.filter(q => q.name !== name)
    state.prefetcher?.instanceStopped(name)
    this.refreshBooting(imageId, state)
    for (const recording of state.recordings) {
      if (recording.instance === name) {
        void this.finishRecording(imageId, state, recording).catch(err => this.init.logger.warn('recording not saved', { imageId, error: err }))
      }
    }
  }

  /**
   * Wraps an image's export for one NBD connection: reads are noted for read-ahead and, when the connection
   * is a VM created here, recorded into the boot profile.
   */
  wrapExport (imageId: string, exp: NbdExport): NbdExport {
    const state = this.images.get(imageId)
    if (state === undefined) return exp
    const cache = state.image.cache
    const { blockSizeBytes } = state.image.manifest
    let stream: string | undefined
    let recording: Recording | undefined
    const begin = (): void => {
      const queued = state.queued.shift()
      if (queued === undefined) {
        stream = `connection-${this.nextConnection++}`
        return
      }
      stream = queued.name
      const image = state.image
      recording = {
        instance: queued.name,
        lastReadMs: this.now(),
        recorder: createRecorder({
          imageId,
          rootHex: image.manifest.rootHex,
          blockSizeBytes,
          blockCount: image.manifest.blockCount,
          instanceStartMs: queued.atMs
        })
      }
      state.recordings.add(recording)
    }
    return {
      name: exp.name,
      description: exp.description,
      sizeBytes: exp.sizeBytes,
      read: async (offset, length, signal) => {
        if (stream === undefined) begin()
        const nowMs = this.now()
        const stamp = this.useStamp()
        let hit = true
        const first = Math.floor(offset / blockSizeBytes)
        const last = Math.min(state.lastUse.length - 1, Math.floor((offset + length - 1) / blockSizeBytes))
        for (let b = first; b <= last; b++) {
          if (!cache.hasLocal(b)) hit = false
          state.lastUse[b] = stamp
        }
        if (hit) state.readsLocal++
        else state.readsFetched++
        if (recording !== undefined && state.recordings.has(recording)) {
          recording.recorder.noteRead(nowMs, offset, length)
          recording.lastReadMs = nowMs
        }
        state.prefetcher?.noteRead(stream!, offset, length, hit)
        try {
          return await exp.read(offset, length, signal)
        } finally {
          // The prefetcher held back while this read waited: let it plan again now, not at its next tick.
          if (!hit) state.prefetcher?.wake()
        }
      }
    }
  }

  /** Called on the daemon's heartbeat: ends quiet recordings, feeds link use, retires finished prefetchers, keeps the quota. */
  async heartbeat (): Promise<void> {
    const nowMs = this.now()
    const quietMs = this.init.recordingQuietMs ?? RECORDING_QUIET_MS
    for (const [imageId, state] of this.images) {
      for (const recording of state.recordings) {
        const limitMs = recording.recorder.touchedBlocks < MIN_RECORDING_ENTRIES ? quietMs * RECORDING_START_QUIET_FACTOR : quietMs
        if (nowMs - recording.lastReadMs >= limitMs) await this.finishRecording(imageId, state, recording)
      }
      this.refreshBooting(imageId, state)
      // An image without a prefetcher (a seed, most of an idle daemon's images) has no link use to note.
      if (state.prefetcher === undefined) continue
      const demandBytes = demandBytesOf(state.image.cache)
      const elapsedMs = Math.max(1, nowMs - state.lastSampleMs)
      state.prefetcher.noteUtilization(Math.min(1, ((demandBytes - state.lastDemandBytes) * 1000 / elapsedMs) / this.init.linkBytesPerSec))
      state.lastDemandBytes = demandBytes
      state.lastSampleMs = nowMs
      if (state.image.cache.isComplete()) {
        const bytesPrefetched = state.prefetcher.progress().bytesFetched
        await this.retirePrefetcher(state)
        this.init.logger.info('image complete: this agent is now a seed for it', { imageId, bytesPrefetched })
      }
    }
    await this.enforceQuota()
  }

  /** Bytes the caches hold on disk (present blocks that are not zero blocks). */
  usedBytes (): number {
    let used = 0
    for (const state of this.images.values()) {
      used += Math.max(0, state.image.cache.presentCount() - state.zeroBlocks) * state.image.manifest.blockSizeBytes
    }
    return used
  }

  /**
   * Keeps the caches under the quota: idle prefetch stops near it; over it, blocks of images no instance here
   * uses go, least recently used image first (src/prefetch/evict.ts chooses). Returns the plan when it evicted.
   */
  async enforceQuota (): Promise<EvictionPlan | undefined> {
    const quota = this.init.quotaBytes
    if (quota === null || quota === undefined || this.evicting) return undefined
    let used = this.usedBytes()
    const allowIdle = this.idleAllowed ? used < quota * QUOTA_IDLE_STOP : used < quota * QUOTA_IDLE_RESUME
    if (allowIdle !== this.idleAllowed) {
      this.idleAllowed = allowIdle
      for (const state of this.images.values()) state.prefetcher?.setIdleEnabled(allowIdle)
      this.init.logger.info(allowIdle ? 'idle prefetch resumes: cache under its quota' : 'idle prefetch stops: cache near its quota', { usedBytes: used, quotaBytes: quota })
    }
    if (used <= quota) return undefined
    this.evicting = true
    try {
      const input: EvictionImage[] = []
      for (const [imageId, state] of this.images) {
        const cache = state.image.cache
        const manifest = state.image.manifest
        const blocks: Array<{ block: number, lastUseMs: number }> = []
        for (let b = 0; b < manifest.blockCount; b++) {
          if (cache.isDurable(b) && !isZeroBlock(manifest, b)) blocks.push({ block: b, lastUseMs: state.lastUse[b] })
        }
        // The origin's image is its source: never evicted here. An instance pins its image whole.
        const pinned = (this.init.openInstances?.(imageId) ?? 0) + (state.image.record.origin ? 1 : 0)
        input.push({ imageId, blockSizeBytes: manifest.blockSizeBytes, blocks, openInstances: pinned })
      }
      const plan = chooseEvictions({ images: input, quotaBytes: quota })
      for (const { imageId, blocks } of plan.evict) {
        const state = this.images.get(imageId)
        if (state === undefined || blocks.length === 0) continue
        // Re-checked now: an instance may have been created while the plan was made.
        if ((this.init.openInstances?.(imageId) ?? 0) > 0) continue
        // Stop its prefetcher first, or idle prefetch fetches the blocks back.
        state.evictedHold = true
        await this.retirePrefetcher(state)
        const result = await state.image.cache.evict(blocks, { punchHole: this.init.punchHole })
        state.evictedBlocks += result.evicted.length
        this.init.logger.info('evicted blocks to keep the cache quota', {
          imageId, blocks: result.evicted.length, skipped: result.skipped.length, freedBytes: result.freedBytes, quotaBytes: quota
        })
      }
      used = this.usedBytes()
      if (plan.shortBytes > 0) {
        this.init.logger.warn('cache over its quota: the rest is pinned by open instances', { usedBytes: used, quotaBytes: quota, pinnedBytes: plan.pinnedBytes })
      }
      return plan
    } finally {
      this.evicting = false
    }
  }

  private async finishRecording (imageId: string, state: ImageState, recording: Recording): Promise<void> {
    if (!state.recordings.delete(recording)) return
    this.refreshBooting(imageId, state)
    const recorded = recording.recorder.toProfile()
    const entries = recorded.entries.length
    if (entries < MIN_RECORDING_ENTRIES || entries > state.image.manifest.blockCount * MAX_RECORDING_SHARE) {
      this.init.logger.info('recording not kept as a boot', { imageId, instance: recording.instance, entries })
      return
    }
    const profile = state.profile === undefined ? recorded : mergeProfiles(state.profile, recorded)
    await this.setProfile(imageId, state, profile)
    this.init.logger.info('boot profile updated', { imageId, instance: recording.instance, entries: profile.entries.length, boots: profile.boots, version: profile.version })
  }

  private async setProfile (imageId: string, state: ImageState, profile: BootProfile, bytes?: Uint8Array): Promise<void> {
    const encoded = bytes ?? encodeProfile(profile)
    await this.init.db.put(imageId, encoded)
    state.profile = profile
    state.profileBytes = encoded
    state.liveProfile = undefined
    state.prefetcher?.setProfile(profile)
    this.init.onProfileChanged?.(imageId, profile)
  }

  /** VMs of the image this host is booting now: recordings in progress, and instances created but not yet connected. */
  booting (imageId: string): number {
    const state = this.images.get(imageId)
    if (state === undefined) return 0
    const nowMs = this.now()
    let n = 0
    for (const r of state.recordings) if (!r.recorder.full) n++
    for (const q of state.queued) if (nowMs - q.atMs < QUEUED_BOOTING_MS) n++
    return n
  }

  /** Tells the peer layer when the booting count changed (it advertises it). */
  private refreshBooting (imageId: string, state: ImageState): void {
    const n = this.booting(imageId)
    if (n === state.bootingAdvertised) return
    state.bootingAdvertised = n
    this.init.onProfileChanged?.(imageId)
  }

  /** The first-touch order of the longest boot being recorded here now (binary form), for booting peers. */
  liveProfile (imageId: string): Uint8Array | undefined {
    const state = this.images.get(imageId)
    if (state === undefined) return undefined
    let best: Recording | undefined
    for (const r of state.recordings) if (!r.recorder.full && r.recorder.touchedBlocks > (best?.recorder.touchedBlocks ?? 0)) best = r
    if (best === undefined) return undefined
    const nowMs = this.now()
    const served = state.liveServed
    if (served !== undefined && (served.entries === best.recorder.touchedBlocks || nowMs - served.atMs < LIVE_PROFILE_REFRESH_MS)) return served.bytes
    const bytes = encodeProfile(best.recorder.toProfile())
    state.liveServed = { atMs: nowMs, entries: best.recorder.touchedBlocks, bytes }
    return bytes
  }

  /** True while a live profile would help here: a VM of the image boots and no learned profile exists. */
  wantsLiveProfile (imageId: string): boolean {
    const state = this.images.get(imageId)
    return state !== undefined && state.profile === undefined && state.prefetcher !== undefined && this.booting(imageId) > 0
  }

  /**
   * A booting peer's live profile: decoded with bounds, must fit the manifest (throws otherwise). Read-ahead follows
   * it when there is no learned profile and it is longer than the live one followed now. Not stored, not advertised.
   */
  adoptLiveProfile (imageId: string, bytes: Uint8Array): boolean {
    const state = this.images.get(imageId)
    if (state === undefined) return false
    const incoming = decodeProfile(bytes, { expect: state.image.manifest, maxBytes: MAX_PROFILE_BYTES })
    checkProfileFits(incoming, state.image.manifest)
    if (state.profile !== undefined || state.prefetcher === undefined) return false
    if (state.liveProfile !== undefined && incoming.entries.length <= state.liveProfile.entries.length) return false
    state.liveProfile = incoming
    state.prefetcher.setProfile(incoming)
    return true
  }

  profile (imageId: string): BootProfile | undefined {
    return this.images.get(imageId)?.profile
  }

  /** The image's profile with its binary form (what adverts announce and peers fetch). */
  localProfile (imageId: string): { version: string, boots: number, bytes: Uint8Array } | undefined {
    const state = this.images.get(imageId)
    if (state?.profile === undefined || state.profileBytes === undefined) return undefined
    return { version: state.profile.version, boots: state.profile.boots, bytes: state.profileBytes }
  }

  exportProfile (imageId: string): ReturnType<typeof profileToJson> | undefined {
    const profile = this.images.get(imageId)?.profile
    return profile === undefined ? undefined : profileToJson(profile)
  }

  /** Merges an operator's profile (JSON form) into the image's. Throws ProfileDecodeError/ProfileMismatchError. */
  async importProfile (imageId: string, json: unknown): Promise<BootProfile> {
    const state = this.images.get(imageId)
    if (state === undefined) throw new Error(`no image '${imageId}'`)
    const incoming = profileFromJson(json, { expect: state.image.manifest })
    checkProfileFits(incoming, state.image.manifest)
    const merged = state.profile === undefined ? incoming : mergeProfiles(state.profile, incoming)
    await this.setProfile(imageId, state, merged)
    return merged
  }

  /**
   * A profile from a peer: data about performance only. It is decoded with bounds, must fit the manifest, and
   * is adopted (not merged: that would count the same boots again) when it has seen more boots than ours.
   */
  async adoptPeerProfile (imageId: string, bytes: Uint8Array): Promise<boolean> {
    const state = this.images.get(imageId)
    if (state === undefined) return false
    const incoming = decodeProfile(bytes, { expect: state.image.manifest, maxBytes: MAX_PROFILE_BYTES })
    checkProfileFits(incoming, state.image.manifest)
    if (state.profile !== undefined && (incoming.boots <= state.profile.boots || incoming.version === state.profile.version)) return false
    await this.setProfile(imageId, state, incoming, bytes)
    this.init.logger.info('boot profile adopted from a peer', { imageId, boots: incoming.boots, entries: incoming.entries.length, version: incoming.version })
    return true
  }

  progress (imageId: string): ImagePrefetchStatus | undefined {
    const state = this.images.get(imageId)
    if (state === undefined) return undefined
    const cache = state.image.cache
    const remaining = state.image.manifest.blockCount - cache.presentCount()
    let base: PrefetchProgress
    if (state.prefetcher !== undefined) {
      base = state.prefetcher.progress()
    } else {
      const last = state.lastProgress
      base = {
        mode: cache.isComplete() ? 'done' : 'stopped',
        bytesFetched: last?.bytesFetched ?? 0,
        blocksFetched: last?.blocksFetched ?? 0,
        blocksRemaining: remaining,
        etaMs: remaining === 0 ? 0 : null,
        inFlightBatches: 0,
        failedBatches: last?.failedBatches ?? 0,
        instances: 0
      }
    }
    return {
      ...base,
      profileBoots: state.profile?.boots ?? 0,
      profileEntries: state.profile?.entries.length ?? 0,
      profileVersion: state.profile?.version ?? null,
      readsLocal: state.readsLocal,
      readsFetched: state.readsFetched,
      prefetchedBytes: cache.stats().prefetchedBytes,
      evictedBlocks: state.evictedBlocks,
      booting: this.booting(imageId),
      liveProfileEntries: state.liveProfile?.entries.length ?? 0,
      peersBooting: this.init.peersBooting?.(imageId) ?? 0
    }
  }

  async stop (): Promise<void> {
    for (const [imageId, state] of this.images) {
      for (const recording of [...state.recordings]) await this.finishRecording(imageId, state, recording).catch(() => {})
      state.unsubscribe?.()
      await state.prefetcher?.stop()
    }
    this.images.clear()
  }
}
