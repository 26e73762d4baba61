// Wires src/prefetch into the daemon: one prefetcher per image this host does not yet hold whole, one boot
// recorder per VM connection, and the image's learned boot profile (kept in level, shared with peers).
//
// Attribution: reads arrive on NBD connections, and QEMU opens one connection per drive, so a connection is a
// VM. `instance.create` queues the instance name on its image; the next new connection of that image that
// reads takes the oldest queued name. Only such connections are recorded into the profile (an nbdcopy or a
// qemu-img compare is not a boot). A recording ends when the connection has been quiet for a while.

import type { NbdExport } from '../blockstack/types.js'
import type { Image } from '../blockstack/images.js'
import {
  createPrefetcher, createRecorder, mergeProfiles, encodeProfile, decodeProfile, profileToJson, profileFromJson,
  checkProfileFits, type BootProfile, type Prefetcher, type Recorder, type PrefetchProgress
} from '../prefetch/index.js'
import type { DaemonLogger } from './logger.js'

/** A recording ends after this long without reads on its connection. */
export const RECORDING_QUIET_MS = 15_000
/** Recordings with fewer first touches than this are not boots (a VM that died early, a probe). */
export const MIN_RECORDING_ENTRIES = 32
/** A recording that touched more than this share of the image is a scan (a copy), not a boot. */
export const MAX_RECORDING_SHARE = 0.5
/** Instances queued for attribution per image, and how long a queued name waits for its VM. */
const MAX_QUEUED_INSTANCES = 64
const QUEUED_INSTANCE_TTL_MS = 10 * 60_000

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
  /** Told when an image's profile changes (the peer layer advertises its version). */
  onProfileChanged?: (imageId: string, profile: BootProfile) => void
}

interface Recording {
  instance: string
  recorder: Recorder
  lastReadMs: number
}

interface ImageState {
  image: Image
  profile?: BootProfile
  prefetcher?: Prefetcher
  queued: Array<{ name: string, atMs: number }>
  recordings: Set<Recording>
  lastDemandBytes: number
  lastSampleMs: number
}

export class PrefetchManager {
  private readonly images = new Map<string, ImageState>()
  private readonly now: () => number
  private nextConnection = 1

  constructor (private readonly init: PrefetchManagerInit) {
    this.now = init.now ?? Date.now
  }

  async attach (image: Image): Promise<void> {
    const imageId = image.record.imageId
    if (this.images.has(imageId)) return
    const state: ImageState = { image, queued: [], recordings: new Set(), lastDemandBytes: 0, lastSampleMs: this.now() }
    this.images.set(imageId, state)
    const stored = await this.init.db.get(imageId)
    if (stored !== undefined) {
      try {
        state.profile = decodeProfile(stored, { expect: image.manifest })
      } catch (err) {
        this.init.logger.warn('dropping a stored profile that does not fit', { imageId, error: err })
        await this.init.db.del(imageId)
      }
    }
    this.startPrefetcher(state)
  }

  private startPrefetcher (state: ImageState): void {
    const cache = state.image.cache
    if (!this.init.enabled || state.prefetcher !== undefined || cache.isComplete()) return
    const prefetcher = createPrefetcher({
      store: {
        has: i => cache.hasLocal(i),
        blockCount: state.image.manifest.blockCount,
        blockSizeBytes: state.image.manifest.blockSizeBytes,
        rootHex: state.image.manifest.rootHex,
        presentCount: () => cache.presentCount()
      },
      fetch: async (blocks, options) => { await cache.ensure(blocks, options) },
      profile: state.profile,
      pendingOnDemand: () => cache.pendingDemandReads(),
      rateBytesPerSec: this.init.rateBytesPerSec ?? undefined,
      idle: { busyAbove: Math.min(1, this.init.idleLinkFraction + 0.1), idleBelow: this.init.idleLinkFraction }
    })
    state.prefetcher = prefetcher
    prefetcher.start()
  }

  async detach (imageId: string): Promise<void> {
    const state = this.images.get(imageId)
    if (state === undefined) return
    this.images.delete(imageId)
    await state.prefetcher?.stop()
  }

  instanceCreated (name: string, imageId: string): void {
    const state = this.images.get(imageId)
    if (state === undefined) return
    const nowMs = this.now()
    state.queued = state.queued.filter(q => nowMs - q.atMs < QUEUED_INSTANCE_TTL_MS).slice(-(MAX_QUEUED_INSTANCES - 1))
    state.queued.push({ name, atMs: nowMs })
    // Read-ahead from the start of the profile, before the VM's first read arrives.
    state.prefetcher?.instanceStarted(name)
  }

  instanceDestroyed (name: string, imageId: string): void {
    const state = this.images.get(imageId)
    if (state === undefined) return
    state.queued = state.queued.filter(q => q.name !== name)
    state.prefetcher?.instanceStopped(name)
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
        let hit = true
        for (let b = Math.floor(offset / blockSizeBytes); b <= Math.floor((offset + length - 1) / blockSizeBytes); b++) {
          if (!cache.hasLocal(b)) { hit = false; break }
        }
        if (recording !== undefined && state.recordings.has(recording)) {
          recording.recorder.noteRead(nowMs, offset, length)
          recording.lastReadMs = nowMs
        }
        state.prefetcher?.noteRead(stream!, offset, length, hit)
        return await exp.read(offset, length, signal)
      }
    }
  }

  /** Called on the daemon's heartbeat: ends quiet recordings, feeds link use, retires finished prefetchers. */
  async heartbeat (): Promise<void> {
    const nowMs = this.now()
    for (const [imageId, state] of this.images) {
      for (const recording of state.recordings) {
        if (nowMs - recording.lastReadMs >= RECORDING_QUIET_MS) await this.finishRecording(imageId, state, recording)
      }
      const stats = state.image.cache.stats()
      const demandBytes = stats.fetchedBytes - stats.prefetchedBytes
      const elapsedMs = Math.max(1, nowMs - state.lastSampleMs)
      state.prefetcher?.noteUtilization(Math.min(1, ((demandBytes - state.lastDemandBytes) * 1000 / elapsedMs) / this.init.linkBytesPerSec))
      state.lastDemandBytes = demandBytes
      state.lastSampleMs = nowMs
      if (state.prefetcher !== undefined && state.image.cache.isComplete()) {
        const done = state.prefetcher
        state.prefetcher = undefined
        this.init.logger.info('image complete: this agent is now a seed for it', { imageId, bytesPrefetched: done.progress().bytesFetched })
        void done.stop()
      }
    }
  }

  private async finishRecording (imageId: string, state: ImageState, recording: Recording): Promise<void> {
    state.recordings.delete(recording)
    const recorded = recording.recorder.toProfile()
    const entries = recorded.entries.length
    if (entries < MIN_RECORDING_ENTRIES || entries > state.image.manifest.blockCount * MAX_RECORDING_SHARE) {
      this.init.logger.info('recording not kept as a boot', { imageId, instance: recording.instance, entries })
      return
    }
    const profile = state.profile === undefined ? recorded : mergeProfiles(state.profile, recorded)
    await this.setProfile(imageId, state, profile)
    this.init.logger.info('boot profile updated', { imageId, instance: recording.instance, entries: profile.entries.length, boots: profile.boots })
  }

  private async setProfile (imageId: string, state: ImageState, profile: BootProfile): Promise<void> {
    state.profile = profile
    await this.init.db.put(imageId, encodeProfile(profile))
    state.prefetcher?.setProfile(profile)
    this.init.onProfileChanged?.(imageId, profile)
  }

  profile (imageId: string): BootProfile | undefined {
    return this.images.get(imageId)?.profile
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
    const incoming = decodeProfile(bytes, { expect: state.image.manifest })
    if (state.profile !== undefined && (incoming.boots <= state.profile.boots || incoming.version === state.profile.version)) return false
    await this.setProfile(imageId, state, incoming)
    return true
  }

  progress (imageId: string): (PrefetchProgress & { profileBoots: number, profileEntries: number }) | undefined {
    const state = this.images.get(imageId)
    if (state === undefined) return undefined
    const base: PrefetchProgress = state.prefetcher?.progress() ?? {
      mode: state.image.cache.isComplete() ? 'done' : 'stopped',
      bytesFetched: 0,
      blocksFetched: 0,
      blocksRemaining: state.image.manifest.blockCount - state.image.cache.presentCount(),
      etaMs: null,
      inFlightBatches: 0,
      failedBatches: 0,
      instances: 0
    } as PrefetchProgress
    return { ...base, profileBoots: state.profile?.boots ?? 0, profileEntries: state.profile?.entries.length ?? 0 }
  }

  async stop (): Promise<void> {
    for (const [imageId, state] of this.images) {
      for (const recording of [...state.recordings]) await this.finishRecording(imageId, state, recording).catch(() => {})
      await state.prefetcher?.stop()
    }
    this.images.clear()
  }
}
