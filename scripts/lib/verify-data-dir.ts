// Offline check of a stopped (or killed) agent's data dir, read straight from level and the files, not
// through the cache (which would repair what it finds): every block recorded present verifies against the
// signed manifest, every image record has its manifest, every instance record has its overlay.

import { readFile, readdir, open, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { Level } from 'level'
import { decodeManifest, verifyBlock, isZeroBlock, blockLength } from '../../src/blockstack/manifest.js'
import { levelPresenceStore } from '../../src/blockstack/presence.js'
import { Bitmap } from '../../src/blockstack/bitmap.js'

export interface DataDirReport {
  images: number
  blockCount: number
  presentBlocks: number
  /** Blocks recorded present whose bytes do not verify: must be empty. */
  badPresentBlocks: Array<{ imageId: string, block: number }>
  /** Image records whose manifest is missing, undecodable or of another root: must be empty. */
  badImageRecords: string[]
  /** Directories under images/ without a record: interrupted registrations, removed at the next start. */
  imageDirsWithoutRecord: string[]
  instances: number
  /** Instance records whose overlay file is missing: must be empty. */
  instancesWithoutOverlay: string[]
  /** Overlay files without a record: a create or destroy cut short (garbage, not loss). */
  orphanOverlays: string[]
  /** Instance overlay paths, for qemu-img check once the agent runs again. */
  overlayPaths: string[]
}

export function dataDirProblems (report: DataDirReport): string[] {
  return [
    ...report.badPresentBlocks.map(b => `block ${b.block} of ${b.imageId} recorded present but does not verify`),
    ...report.badImageRecords.map(id => `image record ${id} has no valid manifest`),
    ...report.instancesWithoutOverlay.map(name => `instance ${name} has no overlay`)
  ]
}

export async function verifyDataDir (dataDir: string, instancesDir = join(dataDir, 'instances')): Promise<DataDirReport> {
  const report: DataDirReport = {
    images: 0, blockCount: 0, presentBlocks: 0, badPresentBlocks: [], badImageRecords: [], imageDirsWithoutRecord: [],
    instances: 0, instancesWithoutOverlay: [], orphanOverlays: [], overlayPaths: []
  }
  const db = new Level<string, any>(join(dataDir, 'meta'), { valueEncoding: 'json' })
  await db.open()
  try {
    const records = db.sublevel<string, any>('images', { valueEncoding: 'json' })
    const recorded = new Set<string>()
    for await (const [imageId, record] of records.iterator()) {
      recorded.add(imageId)
      report.images++
      const dir = join(dataDir, 'images', imageId)
      let manifest
      try {
        manifest = decodeManifest(await readFile(join(dir, 'manifest')))
        if (manifest.rootHex !== record.rootHex) throw new Error('root differs')
      } catch {
        report.badImageRecords.push(imageId)
        continue
      }
      report.blockCount += manifest.blockCount
      const presence = levelPresenceStore(db.sublevel(`present-${manifest.rootHex}`, { valueEncoding: 'view' }) as any)
      const present = new Bitmap(manifest.blockCount, await presence.load(manifest.blockCount))
      if (present.count() === 0) continue
      const cachePath = join(dir, 'cache.raw')
      const size = await stat(cachePath).then(s => s.size, () => -1)
      // A cache file of the wrong size is reset at open (nothing in it is trusted), so its bits do not count.
      if (size !== manifest.sizeBytes) continue
      const fh = await open(cachePath, 'r')
      try {
        for (let i = 0; i < manifest.blockCount; i++) {
          if (!present.get(i)) continue
          report.presentBlocks++
          const data = Buffer.alloc(blockLength(manifest, i))
          await fh.read(data, 0, data.byteLength, i * manifest.blockSizeBytes)
          const good = isZeroBlock(manifest, i) ? data.every(b => b === 0) : verifyBlock(manifest, i, data)
          if (!good) report.badPresentBlocks.push({ imageId, block: i })
        }
      } finally { await fh.close() }
    }
    for (const entry of await readdir(join(dataDir, 'images')).catch(() => [] as string[])) {
      if (!recorded.has(entry)) report.imageDirsWithoutRecord.push(entry)
    }
    const instances = db.sublevel<string, any>('instances', { valueEncoding: 'json' })
    const overlays = new Set<string>()
    for await (const [name, record] of instances.iterator()) {
      report.instances++
      overlays.add(record.path)
      if (await stat(record.path).then(() => true, () => false)) report.overlayPaths.push(record.path)
      else report.instancesWithoutOverlay.push(name)
    }
    for (const entry of await readdir(instancesDir).catch(() => [] as string[])) {
      if (entry.endsWith('.qcow2') && !overlays.has(join(instancesDir, entry))) report.orphanOverlays.push(entry)
    }
  } finally {
    await db.close()
  }
  return report
}
