// The images a host knows: their manifests and block caches, kept across restarts.
//
// On disk: DATA_DIR/images/<imageId>/manifest (the signed manifest as received) and cache.raw (the sparse
// block cache); in level: one record per image (the commit point of a registration) and the presence bitmap
// of each cache. A directory without a record is an interrupted registration and is removed at start.

import { mkdir, rm, readdir, readFile, stat, realpath } from 'node:fs/promises'
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs'
import { isAbsolute, join, sep } from 'node:path'
import { BlockCache, DEFAULT_HOST_PENDING_WRITE_BYTES, PendingWriteBudget, silentLogger, type Logger } from './cache.js'
import { blockLength, decodeManifest, isTrustedOrigin, manifestFromFile, validateImageId, type Manifest } from './manifest.js'
import { levelPresenceStore, type ChunkDb } from './presence.js'
import { ImageExistsError, ImageFileError, ImageNotFoundError, ImageInUseError, ImagePathNotAllowedError } from './errors.js'
import type { SigningKey } from './signing.js'
import type { BlockSource } from './types.js'
import { sourceSizeBytes } from './device-size.js'
import type { ScrubOptions } from './scrub.js'

export interface ImageRecord {
  imageId: string
  rootHex: string
  sizeBytes: number
  blockSizeBytes: number
  /** True when this host registered the image from a file (it is the image's origin). */
  origin: boolean
  sourcePath?: string
  addedAtMs: number
}

export interface Image {
  record: ImageRecord
  manifest: Manifest
  cache: BlockCache
}

/** The part of a level database the registry uses. */
export interface RegistryDb {
  sublevel: (name: string, options: { valueEncoding: 'json' | 'view' }) => any
}

export interface ImageRegistryInit {
  dataDir: string
  db: RegistryDb
  key: SigningKey
  /** Chooses where the blocks of an image come from (the origin's file, peers, or both). */
  sourceFor: (record: ImageRecord) => BlockSource
  logger?: Logger
  now?: () => number
  fetchTimeoutMs?: number
  /** Background scrub of each cache (scrub.ts defaults when undefined). */
  scrub?: ScrubOptions
  /** Verified blocks waiting for their commit in all caches together (cache.ts PendingWriteBudget). */
  pendingWriteBytes?: number
  /**
   * Origin keys this agent trusts now (its own and the configured ones). An image adopted from a peer whose
   * origin is not one of them any more (the key was taken out of p2p.trust) is not loaded: untrusted() lists
   * it, for the daemon to drop. Undefined: no check (tools and tests that open a registry alone).
   */
  trustedKeys?: readonly Uint8Array[]
}

/** An image on disk whose origin key this agent no longer trusts: not loaded, not served. */
export interface UntrustedImage {
  imageId: string
  originKeyHex: string
}

export interface RegisterOptions {
  blockSizeBytes: number
  /** The file must resolve (symlinks followed) to a path under one of these; empty: nothing is allowed. */
  allowedDirs: readonly string[]
  signal?: AbortSignal
  /** Called as the registration moves (the same values registration() returns). */
  onProgress?: (progress: RegistrationProgress) => void
}

/**
 * Where a registration is: it reads the file twice, once to hash it into the manifest and once to copy its
 * blocks into the cache (through the verified path peers' blocks take), so each phase has its own count.
 */
export interface RegistrationProgress {
  imageId: string
  phase: 'hashing' | 'copying'
  doneBytes: number
  totalBytes: number
  startedAtMs: number
}

/** Blocks the origin copies from its file per ensure() call at registration. */
const REGISTER_BATCH_BLOCKS = 512

/**
 * The real path of an image file the daemon may export: absolute as given, and under an allowed directory
 * once symlinks are resolved (a link inside an allowed directory cannot point out of it). Anyone who can
 * reach the RPC socket may register images, so this is what stops them exporting what the daemon can read.
 */
export async function allowedImagePath (path: string, allowedDirs: readonly string[]): Promise<string> {
  if (!isAbsolute(path)) throw new ImagePathNotAllowedError(`image path '${path}' must be absolute`)
  if (allowedDirs.length === 0) throw new ImagePathNotAllowedError(`no image directories are allowed: set images.allowedDirs in the config (or --allow-image-dir) to register '${path}'`)
  let real: string
  try {
    real = await realpath(path)
  } catch (err) {
    throw new ImageFileError(`cannot read image file '${path}': ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  for (const dir of allowedDirs) {
    let realDir: string
    try {
      realDir = await realpath(dir)
    } catch {
      continue
    }
    if (real.startsWith(realDir.endsWith(sep) ? realDir : realDir + sep)) return real
  }
  throw new ImagePathNotAllowedError(`image path '${path}'${real === path ? '' : ` (${real})`} is not under an allowed image directory (${allowedDirs.join(', ')})`)
}

export class ImageRegistry {
  private readonly images = new Map<string, Image>()
  /** Adopted images whose origin is not trusted any more, with their records: kept on disk until dropped. */
  private readonly untrustedImages = new Map<string, { record: ImageRecord, originKeyHex: string }>()
  /** Image ids with a registration or removal under way. */
  private readonly busy = new Set<string>()
  /** Registrations under way, for progress reports while the register call runs. */
  private readonly registering = new Map<string, RegistrationProgress>()
  private readonly records: any
  private readonly logger: Logger
  private readonly now: () => number
  /** Shared by every cache here: the agent's bound on blocks waiting for their commit. */
  private readonly pendingWrites: PendingWriteBudget

  private constructor (private readonly init: ImageRegistryInit) {
    this.pendingWrites = new PendingWriteBudget(init.pendingWriteBytes ?? DEFAULT_HOST_PENDING_WRITE_BYTES)
    this.records = init.db.sublevel('images', { valueEncoding: 'json' })
    this.logger = init.logger ?? silentLogger
    this.now = init.now ?? Date.now
  }

  static async open (init: ImageRegistryInit): Promise<ImageRegistry> {
    const registry = new ImageRegistry(init)
    await registry.load()
    return registry
  }

  private imageDir (imageId: string): string {
    return join(this.init.dataDir, 'images', imageId)
  }

  private presenceDb (rootHex: string): ChunkDb {
    return this.init.db.sublevel(`present-${rootHex}`, { valueEncoding: 'view' })
  }

  private async load (): Promise<void> {
    await mkdir(join(this.init.dataDir, 'images'), { recursive: true })
    for await (const [imageId, record] of this.records.iterator() as AsyncIterable<[string, ImageRecord]>) {
      try {
        // The record is committed only after the manifest was verified (adopted from a peer) or signed here:
        // a manifest on disk that hashes to its root is that one (decodeManifest).
        const manifest = decodeManifest(await readFile(join(this.imageDir(imageId), 'manifest')), { verifiedRootHex: record.rootHex })
        if (!record.origin && this.init.trustedKeys !== undefined && !isTrustedOrigin(manifest, this.init.trustedKeys)) {
          const originKeyHex = Buffer.from(manifest.originPublicKey).toString('hex')
          this.logger.warn('not loading an image whose origin is not trusted any more', { imageId, originKey: originKeyHex })
          this.untrustedImages.set(imageId, { record, originKeyHex })
          continue
        }
        this.images.set(imageId, { record, manifest, cache: await this.openCache(record, manifest) })
      } catch (err) {
        this.logger.error('dropping an image that cannot be loaded', { imageId, error: (err as Error).message })
        await this.records.del(imageId)
      }
    }
    for (const entry of await readdir(join(this.init.dataDir, 'images'))) {
      if (!this.images.has(entry) && !this.untrustedImages.has(entry)) {
        this.logger.warn('removing an interrupted registration', { imageId: entry })
        await rm(this.imageDir(entry), { recursive: true, force: true })
      }
    }
  }

  private async openCache (record: ImageRecord, manifest: Manifest): Promise<BlockCache> {
    return await BlockCache.open({
      manifest,
      path: join(this.imageDir(record.imageId), 'cache.raw'),
      presence: levelPresenceStore(this.presenceDb(record.rootHex)),
      source: this.init.sourceFor(record),
      logger: this.logger,
      fetchTimeoutMs: this.init.fetchTimeoutMs,
      // Bit rot is found at idle, not only on first read (cache.ts, scrub.ts).
      scrub: this.init.scrub ?? {},
      pendingWrites: this.pendingWrites
    })
  }

  list (): Image[] {
    return [...this.images.values()]
  }

  /** Images found on disk at open whose origin key is not trusted any more (not loaded; see dropUntrusted). */
  untrusted (): UntrustedImage[] {
    return [...this.untrustedImages].map(([imageId, u]) => ({ imageId, originKeyHex: u.originKeyHex }))
  }

  /** Deletes an untrusted image's record, presence and files: its blocks are fetched again if it is trusted again. */
  async dropUntrusted (imageId: string): Promise<void> {
    const u = this.untrustedImages.get(imageId)
    if (u === undefined) return
    await this.deleteStored(imageId, u.record.rootHex)
    this.untrustedImages.delete(imageId)
  }

  /** Deletes an image's record, presence and files (its cache closed first, by the caller). */
  private async deleteStored (imageId: string, rootHex: string): Promise<void> {
    await this.records.del(imageId)
    await this.presenceDb(rootHex).clear()
    await rm(this.imageDir(imageId), { recursive: true, force: true })
  }

  get (imageId: string): Image | undefined {
    return this.images.get(imageId)
  }

  /** The progress of a registration under way, or undefined when none is (not started, or finished). */
  registration (imageId: string): RegistrationProgress | undefined {
    const progress = this.registering.get(imageId)
    return progress === undefined ? undefined : { ...progress }
  }

  require (imageId: string): Image {
    const image = this.images.get(imageId)
    if (image === undefined) throw new ImageNotFoundError(`no image '${imageId}'`)
    return image
  }

  /**
   * Registers a raw image file: hashes it into a manifest signed by this host, then copies its blocks into the
   * cache through the same verified path peers' blocks take. The host is the image's origin and a seed.
   */
  async register (imageId: string, path: string, options: RegisterOptions): Promise<Image> {
    validateImageId(imageId)
    path = await allowedImagePath(path, options.allowedDirs)
    let info
    try {
      info = await stat(path, { bigint: true })
    } catch (err) {
      throw new ImageFileError(`cannot read image file '${path}': ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
    }
    if (!info.isFile() && !info.isBlockDevice()) throw new ImageFileError(`'${path}' is not a regular file or a block device`)
    const sizeBytes = await sourceSizeBytes(path, info).catch((err: Error) => { throw new ImageFileError(err.message) })
    if (sizeBytes === 0) throw new ImageFileError(`'${path}' is empty`)
    return await this.exclusive(imageId, async () => {
      this.assertAbsent(imageId)
      const progress: RegistrationProgress = { imageId, phase: 'hashing', doneBytes: 0, totalBytes: sizeBytes, startedAtMs: this.now() }
      const report = (phase: RegistrationProgress['phase'], doneBytes: number, totalBytes: number): void => {
        Object.assign(progress, { phase, doneBytes, totalBytes })
        options.onProgress?.({ ...progress })
      }
      this.registering.set(imageId, progress)
      try {
        return await this.registerFile(imageId, path, options, report)
      } finally {
        this.registering.delete(imageId)
      }
    })
  }

  private async registerFile (imageId: string, path: string, options: RegisterOptions,
    report: (phase: RegistrationProgress['phase'], doneBytes: number, totalBytes: number) => void): Promise<Image> {
    let manifest: Manifest
    try {
      manifest = await manifestFromFile({
        imageId,
        path,
        blockSizeBytes: options.blockSizeBytes,
        key: this.init.key,
        signal: options.signal,
        nowMs: this.now(),
        onProgress: (doneBytes, totalBytes) => report('hashing', doneBytes, totalBytes)
      })
    } catch (err) {
      if ((err as Error).name === 'AbortError' || (err as Error).name === 'InvalidImageIdError') throw err
      throw new ImageFileError(`cannot read image file '${path}': ${(err as Error).message}`)
    }
    const record: ImageRecord = {
      imageId,
      rootHex: manifest.rootHex,
      sizeBytes: manifest.sizeBytes,
      blockSizeBytes: manifest.blockSizeBytes,
      origin: true,
      sourcePath: path,
      addedAtMs: this.now()
    }
    return await this.install(record, manifest, async cache => {
      const signal = options.signal ?? AbortSignal.timeout(3_600_000)
      const missing: number[] = []
      let doneBytes = 0
      for (let i = 0; i < manifest.blockCount; i++) {
        if (cache.has(i)) doneBytes += blockLength(manifest, i)
        else missing.push(i)
      }
      report('copying', doneBytes, manifest.sizeBytes)
      for (let i = 0; i < missing.length; i += REGISTER_BATCH_BLOCKS) {
        const batch = missing.slice(i, i + REGISTER_BATCH_BLOCKS)
        await cache.ensure(batch, { signal, priority: 'prefetch' })
        for (const index of batch) doneBytes += blockLength(manifest, index)
        report('copying', doneBytes, manifest.sizeBytes)
      }
      await cache.flush()
    })
  }

  /** Adds an image known from its (already verified and trusted) manifest; blocks come from peers. */
  async adopt (manifest: Manifest): Promise<Image> {
    const existing = this.images.get(manifest.imageId)
    if (existing !== undefined && existing.manifest.rootHex === manifest.rootHex) return existing
    return await this.exclusive(manifest.imageId, async () => {
      this.assertAbsent(manifest.imageId)
      const record: ImageRecord = {
        imageId: manifest.imageId,
        rootHex: manifest.rootHex,
        sizeBytes: manifest.sizeBytes,
        blockSizeBytes: manifest.blockSizeBytes,
        origin: false,
        addedAtMs: this.now()
      }
      return await this.install(record, manifest, async () => {})
    })
  }

  private async install (record: ImageRecord, manifest: Manifest, fill: (cache: BlockCache) => Promise<void>): Promise<Image> {
    const dir = this.imageDir(record.imageId)
    // The directory, manifest and cache file are made with synchronous calls (a manifest is at most a few MiB;
    // usually tens of KiB): adopting an image is on instance.create's path, where each thread-pool round trip
    // waited 5-100 ms for a loaded 2-core machine to run this process again (8-host testbed wave). Only a
    // leftover directory, which may hold a large cache file, is removed on the thread pool. Its presence
    // entries are cleared when the cache finds no cache file of the image's size (cache.ts load()).
    if (existsSync(dir)) await rm(dir, { recursive: true, force: true })
    mkdirSync(dir, { recursive: true })
    let cache: BlockCache | undefined
    try {
      writeFileSync(join(dir, 'manifest.tmp'), manifest.encoded)
      renameSync(join(dir, 'manifest.tmp'), join(dir, 'manifest'))
      cache = await this.openCache(record, manifest)
      await fill(cache)
      await this.records.put(record.imageId, record)
    } catch (err) {
      await cache?.close().catch(() => {})
      await rm(dir, { recursive: true, force: true })
      await this.presenceDb(record.rootHex).clear().catch(() => {})
      throw err
    }
    const image = { record, manifest, cache }
    this.images.set(record.imageId, image)
    return image
  }

  /** Removes an image and its cache. `inUse` is asked first, inside the image's lock. */
  async remove (imageId: string, inUse: (imageId: string) => string[]): Promise<void> {
    const image = this.require(imageId)
    await this.exclusive(imageId, async () => {
      const users = inUse(imageId)
      if (users.length > 0) throw new ImageInUseError(`image '${imageId}' is used by instance(s) ${users.join(', ')}`)
      this.images.delete(imageId)
      await image.cache.close()
      await this.deleteStored(imageId, image.record.rootHex)
    })
  }

  private async exclusive<T> (imageId: string, fn: () => Promise<T>): Promise<T> {
    if (this.busy.has(imageId)) throw new ImageExistsError(`image '${imageId}' is being changed by another request`)
    this.busy.add(imageId)
    try {
      return await fn()
    } finally {
      this.busy.delete(imageId)
    }
  }

  /** Throws ImageExistsError when an image of that id is registered. */
  assertAbsent (imageId: string): void {
    if (this.images.has(imageId)) throw new ImageExistsError(`image '${imageId}' is already registered`)
  }

  async close (): Promise<void> {
    for (const image of this.images.values()) await image.cache.close()
    this.images.clear()
  }
}
