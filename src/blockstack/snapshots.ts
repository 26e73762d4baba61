// Per-VM copy-on-write snapshots: a qcow2 overlay per instance whose backing file is the image's NBD export
// (nbd+unix:///IMAGE?socket=SOCK). VM writes land only in the overlay; reads of untouched clusters go to the
// export, i.e. to the block cache. qcow2 stores the backing URI, so the NBD socket path must stay stable.

import { rmSync } from 'node:fs'
import { mkdir, readdir, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { InstanceExistsError, InstanceInUseError, InstanceNotFoundError, InvalidNameError, SnapshotToolError } from './errors.js'
import { Qcow2OverlayError, writeQcow2OverlaySync } from './qcow2-overlay.js'

export interface InstanceRecord {
  name: string
  imageId: string
  path: string
  backing: string
  createdAtMs: number
}

export interface SnapshotStoreInit {
  instancesDir: string
  /** level sublevel (json values) holding the instance records. */
  db: any
  /** The NBD URI of an image's export, as qemu will reach it. */
  backingUri: (imageId: string) => string
  now?: () => number
  qemuImg?: string
  toolTimeoutMs?: number
}

const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/

export function validateInstanceName (name: unknown): string {
  if (typeof name !== 'string' || !NAME_PATTERN.test(name)) {
    throw new InvalidNameError(`instance name must match ${NAME_PATTERN.source} (letters, digits, '.', '_', '-'; at most 64; no path separators)`)
  }
  return name
}

export class SnapshotStore {
  private readonly instances = new Map<string, InstanceRecord>()
  private readonly busy = new Set<string>()

  private constructor (private readonly init: SnapshotStoreInit) {}

  static async open (init: SnapshotStoreInit): Promise<SnapshotStore> {
    const store = new SnapshotStore(init)
    await mkdir(init.instancesDir, { recursive: true })
    for await (const [name, record] of init.db.iterator() as AsyncIterable<[string, InstanceRecord]>) {
      store.instances.set(name, record)
    }
    await store.removeOrphans()
    return store
  }

  /**
   * An overlay is created before its record is saved, and its record deleted before the file: a crash between
   * the two leaves an overlay nobody was ever given (or that was already destroyed). Those are removed at open;
   * only files named as this store names overlays are touched.
   */
  private async removeOrphans (): Promise<void> {
    const recorded = new Set([...this.instances.values()].map(r => r.path))
    for (const file of await readdir(this.init.instancesDir)) {
      if (!file.endsWith('.qcow2') || !NAME_PATTERN.test(file.slice(0, -'.qcow2'.length))) continue
      const path = join(this.init.instancesDir, file)
      if (!recorded.has(path)) await rm(path, { force: true })
    }
  }

  list (): InstanceRecord[] {
    return [...this.instances.values()].sort((a, b) => a.name.localeCompare(b.name))
  }

  get (name: string): InstanceRecord | undefined {
    return this.instances.get(name)
  }

  usersOf (imageId: string): string[] {
    return this.list().filter(i => i.imageId === imageId).map(i => i.name)
  }

  async create (name: string, imageId: string, sizeBytes: number, options: { signal?: AbortSignal } = {}): Promise<InstanceRecord> {
    validateInstanceName(name)
    if (this.instances.has(name) || this.busy.has(name)) throw new InstanceExistsError(`instance '${name}' already exists`)
    this.busy.add(name)
    const path = join(this.init.instancesDir, `${name}.qcow2`)
    const backing = this.init.backingUri(imageId)
    try {
      // Synchronous file calls: a create is on the boot's critical path, and on a loaded machine each
      // thread-pool round trip waited up to 190 ms for this process to run again (8-host testbed wave).
      rmSync(path, { force: true })
      try {
        // Written here rather than by `qemu-img create` (qcow2-overlay.ts says why); the same bytes.
        options.signal?.throwIfAborted()
        writeQcow2OverlaySync(path, sizeBytes, backing)
      } catch (err) {
        await rm(path, { force: true })
        if (err instanceof Qcow2OverlayError) throw new SnapshotToolError(`overlay not written: ${err.message}`)
        throw err
      }
      const record: InstanceRecord = { name, imageId, path, backing, createdAtMs: (this.init.now ?? Date.now)() }
      await this.init.db.put(name, record)
      this.instances.set(name, record)
      return record
    } finally {
      this.busy.delete(name)
    }
  }

  /** Removes an instance and its overlay; refused (InstanceInUseError) while a VM holds it, unless `force`. */
  async destroy (name: string, options: { force?: boolean, signal?: AbortSignal } = {}): Promise<InstanceRecord> {
    validateInstanceName(name)
    const record = this.instances.get(name)
    if (record === undefined || this.busy.has(name)) throw new InstanceNotFoundError(`no instance '${name}'`)
    this.busy.add(name)
    try {
      if (options.force !== true) await this.assertNotHeld(record, options.signal)
      await this.init.db.del(name)
      this.instances.delete(name)
      await rm(record.path, { force: true })
      return record
    } finally {
      this.busy.delete(name)
    }
  }

  /**
   * QEMU takes OFD locks on the images it opens; `qemu-img info` without -U needs the shared lock and fails
   * while a VM holds the overlay for writing. Backing files are not opened, so the NBD export is not touched.
   */
  private async assertNotHeld (record: InstanceRecord, signal?: AbortSignal): Promise<void> {
    const { execa } = await import('execa')
    const result = await execa(this.init.qemuImg ?? 'qemu-img', ['info', '--output=json', '-f', 'qcow2', record.path], {
      cancelSignal: signal,
      timeout: this.init.toolTimeoutMs ?? 60_000,
      stdin: 'ignore',
      reject: false
    })
    signal?.throwIfAborted()
    if (result.exitCode === 0) return
    const stderr = String(result.stderr ?? '').trim()
    if (/lock/i.test(stderr)) {
      throw new InstanceInUseError(`instance '${record.name}' is in use: a VM holds ${record.path} open (${stderr.split('\n')[0]}); stop the VM first, or destroy with --force`)
    }
    // A missing or damaged overlay is no reason to keep the record: destroy goes on.
  }

  /** Overlay size on disk (what the VM wrote), for status. */
  async overlayBytes (name: string): Promise<number | undefined> {
    const record = this.instances.get(name)
    if (record === undefined) return undefined
    try {
      return (await stat(record.path)).blocks * 512
    } catch {
      return undefined
    }
  }
}
