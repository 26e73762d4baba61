// The JSON-RPC methods of the daemon. Each validates its params (errors name the field) and returns plain
// JSON. Documented in README.md; scripts rely on the shapes: add fields, never rename.

import { z } from 'zod'
import type { RpcMethod } from '../rpc/server.js'
import { InvalidParamsError } from '../rpc/errors.js'

export class ProfileUnavailableError extends Error {
  override name = 'ProfileUnavailableError'
}
import type { Daemon } from './daemon.js'
import type { Image } from '../blockstack/images.js'
import type { InstanceRecord } from '../blockstack/snapshots.js'
import type { ImageRegisterStatus } from '../rpc/types.js'

const name = z.string().min(1).max(64)

const schemas = {
  'image.register': z.object({ id: name, path: z.string().min(1).max(4096), blockSizeBytes: z.number().int().optional() }).strict(),
  'image.register.status': z.object({ id: name }).strict(),
  'image.list': z.object({}).strict(),
  'image.remove': z.object({ id: name }).strict(),
  'instance.create': z.object({ name, image: name }).strict(),
  'instance.destroy': z.object({ name, force: z.boolean().optional() }).strict(),
  'instance.list': z.object({}).strict(),
  'node.status': z.object({}).strict(),
  'image.profile.export': z.object({ id: name }).strict(),
  'image.profile.import': z.object({ id: name, profile: z.record(z.string(), z.unknown()) }).strict()
}

function parse<T extends z.ZodTypeAny> (schema: T, params: unknown): z.infer<T> {
  const result = schema.safeParse(params ?? {})
  if (!result.success) {
    const issue = result.error.issues[0]
    const field = issue.path.join('.')
    const keys = issue.code === 'unrecognized_keys' ? `: ${(issue as { keys: string[] }).keys.join(', ')}` : ''
    throw new InvalidParamsError(`invalid params${field === '' ? '' : ` field '${field}'`}: ${issue.message}${keys}`)
  }
  return result.data
}

export function imageSummary (daemon: Daemon, image: Image): Record<string, unknown> {
  const stats = image.cache.stats()
  return {
    id: image.record.imageId,
    sizeBytes: image.manifest.sizeBytes,
    blockSizeBytes: image.manifest.blockSizeBytes,
    root: image.manifest.rootHex,
    origin: image.record.origin,
    originKey: Buffer.from(image.manifest.originPublicKey).toString('hex'),
    nbd: daemon.nbdUri(image.record.imageId),
    heldFraction: stats.presentBlocks / stats.blockCount,
    presentBytes: stats.presentBytes,
    seed: stats.presentBlocks === stats.blockCount,
    instances: daemon.snapshots.usersOf(image.record.imageId),
    cache: stats
  }
}

/** The RPC socket's flow state: clients that do not read their replies show as paused, with bounded bytes. */
function rpcSummary (daemon: Daemon): Record<string, number> {
  const stats = daemon.rpc.stats()
  return {
    connections: stats.connections.length,
    maxConnections: stats.maxConnections,
    pausedConnections: stats.connections.filter(c => c.paused).length,
    unsentReplyBytes: stats.connections.reduce((sum, c) => sum + c.unsentReplyBytes, 0),
    maxUnsentReplyBytesPerConnection: stats.maxUnsentReplyBytes,
    evictedConnections: stats.evictedConnections
  }
}

export function createMethods (getDaemon: () => Daemon): Record<string, RpcMethod> {
  return {
    'image.register': async (params, { signal }) => {
      const p = parse(schemas['image.register'], params)
      const daemon = getDaemon()
      const image = await daemon.images.register(p.id, p.path, { blockSizeBytes: p.blockSizeBytes ?? daemon.config.blockSizeBytes, allowedDirs: daemon.config.images.allowedDirs, signal })
      await daemon.attachImage(image)
      return imageSummary(daemon, image)
    },
    // image.register answers once the image is registered; this reports how far it is meanwhile, so that a
    // client polls it on a second connection (one request, one response each: plain JSON-RPC 2.0).
    'image.register.status': async (params): Promise<ImageRegisterStatus> => {
      const p = parse(schemas['image.register.status'], params)
      return getDaemon().images.registration(p.id) ?? null
    },
    'image.list': async (params) => {
      parse(schemas['image.list'], params)
      const daemon = getDaemon()
      return daemon.images.list().map(image => imageSummary(daemon, image)).sort((a, b) => String(a.id).localeCompare(String(b.id)))
    },
    'image.remove': async (params) => {
      const p = parse(schemas['image.remove'], params)
      const daemon = getDaemon()
      await daemon.images.remove(p.id, imageId => daemon.snapshots.usersOf(imageId))
      await daemon.detachImage(p.id)
      return { id: p.id, removed: true }
    },
    'image.profile.export': async (params) => {
      const p = parse(schemas['image.profile.export'], params)
      const daemon = getDaemon()
      daemon.images.require(p.id)
      const profile = daemon.prefetch.exportProfile(p.id)
      if (profile === undefined) throw new ProfileUnavailableError(`image '${p.id}' has no boot profile yet: boot a VM from it first, or import one`)
      return profile
    },
    'image.profile.import': async (params) => {
      const p = parse(schemas['image.profile.import'], params)
      const daemon = getDaemon()
      daemon.images.require(p.id)
      const merged = await daemon.prefetch.importProfile(p.id, p.profile)
      return { id: p.id, entries: merged.entries.length, boots: merged.boots, version: merged.version }
    },
    'instance.create': async (params, { signal }) => {
      const p = parse(schemas['instance.create'], params)
      const daemon = getDaemon()
      const startMs = performance.now()
      const known = daemon.images.get(p.image)
      let image: Image
      let record: InstanceRecord
      let imageMs: number
      if (known !== undefined) {
        image = known
        imageMs = performance.now()
        record = await daemon.snapshots.create(p.name, image.record.imageId, image.manifest.sizeBytes, { signal })
      } else {
        // A new image: the overlay needs only the manifest's size, so it is written while the image is installed
        // and attached (on a loaded host each of those steps waits for the thread pool and the event loop; the
        // first create of a boot wave is on every VM's critical path).
        const { manifest, fetchMs } = await daemon.fetchManifest(p.image, signal)
        imageMs = startMs + fetchMs
        const [installed, created] = await Promise.allSettled([
          daemon.installFetched(manifest, fetchMs),
          daemon.snapshots.create(p.name, manifest.imageId, manifest.sizeBytes, { signal })
        ])
        if (installed.status === 'rejected') {
          // No instance over an image this host could not install.
          if (created.status === 'fulfilled') await daemon.snapshots.destroy(p.name, { force: true }).catch(() => {})
          throw installed.reason
        }
        // The attach goes on after this answer (installFetched); it fails only with the peer layer or the
        // metadata store, and then says so here.
        installed.value.attached.catch(err => daemon.logger.error('image attach failed', { image: manifest.imageId, error: err }))
        if (created.status === 'rejected') throw created.reason
        image = installed.value.image
        record = created.value
      }
      daemon.prefetch.instanceCreated(record.name, image.record.imageId)
      // Where a slow create spent its time: finding the image's manifest (a new image), then the snapshot (for a
      // new image, written while the image was installed: snapshotMs is then that install and the snapshot).
      daemon.logger.info('instance created', { name: record.name, image: record.imageId, newImage: known === undefined, imageMs: Math.round(imageMs - startMs), snapshotMs: Math.round(performance.now() - imageMs) })
      return { name: record.name, image: record.imageId, path: record.path, backing: record.backing, createdAtMs: record.createdAtMs }
    },
    'instance.destroy': async (params, { signal }) => {
      const p = parse(schemas['instance.destroy'], params)
      const daemon = getDaemon()
      const record = await daemon.snapshots.destroy(p.name, { force: p.force === true, signal })
      daemon.prefetch.instanceDestroyed(record.name, record.imageId)
      return { name: record.name, image: record.imageId, destroyed: true }
    },
    'instance.list': async (params) => {
      parse(schemas['instance.list'], params)
      const daemon = getDaemon()
      const out = []
      for (const record of daemon.snapshots.list()) {
        out.push({ name: record.name, image: record.imageId, path: record.path, backing: record.backing, createdAtMs: record.createdAtMs, overlayBytes: await daemon.snapshots.overlayBytes(record.name) })
      }
      return out
    },
    'node.status': async (params) => {
      parse(schemas['node.status'], params)
      const daemon = getDaemon()
      const peer = daemon.peers?.status()
      const images: Record<string, unknown> = {}
      for (const image of daemon.images.list()) {
        images[image.record.imageId] = {
          ...imageSummary(daemon, image),
          ...(peer?.images?.[image.record.imageId] ?? {}),
          prefetch: daemon.prefetch.progress(image.record.imageId)
        }
      }
      return {
        peerId: daemon.identity.peerId,
        publicKey: daemon.identity.publicKeyHex,
        version: '0.1.0',
        uptimeMs: Date.now() - daemon.startedAtMs,
        socket: daemon.config.socket,
        nbdSocket: daemon.config.nbd.socket,
        dataDir: daemon.config.dataDir,
        p2p: peer === undefined ? { enabled: false } : { enabled: true, ...peer, images: undefined },
        listenAddrs: peer?.listenAddrs ?? [],
        instances: daemon.snapshots.list().length,
        rpc: rpcSummary(daemon),
        images
      }
    }
  }
}
