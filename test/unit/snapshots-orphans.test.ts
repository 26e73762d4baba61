// Overlays left without a record by a crash (between qemu-img create and the record, or between the record's
// delete and the file's) are removed when the store opens; recorded overlays and other files stay.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, writeFile, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Level } from 'level'
import { SnapshotStore } from '../../src/blockstack/snapshots.js'

test('opening the snapshot store removes overlays that have no record, and nothing else', { timeout: 30_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vmt-orphans-'))
  const db = new Level<string, any>(join(dir, 'db'), { valueEncoding: 'json' })
  try {
    const instancesDir = join(dir, 'instances')
    const init = { instancesDir, db, backingUri: (id: string) => `nbd+unix:///${id}?socket=${join(dir, 'nbd.sock')}` }
    await SnapshotStore.open(init) // makes the instances dir
    // A recorded instance (as create() leaves it: the record, then its overlay file).
    const kept = { name: 'vm-kept', imageId: 'img', path: join(instancesDir, 'vm-kept.qcow2'), backing: init.backingUri('img'), createdAtMs: 1 }
    await db.put(kept.name, kept)
    await writeFile(kept.path, 'a recorded overlay')
    await writeFile(join(instancesDir, 'vm-orphan.qcow2'), 'left by a crash')
    await writeFile(join(instancesDir, 'notes.txt'), 'an operator file')
    await writeFile(join(instancesDir, '.hidden.qcow2'), 'not a name this store makes')
    const reopened = await SnapshotStore.open(init)
    assert.deepEqual(reopened.list().map(r => r.name), ['vm-kept'])
    assert.deepEqual((await readdir(instancesDir)).sort(), ['.hidden.qcow2', 'notes.txt', 'vm-kept.qcow2'])
    assert.equal(reopened.get('vm-kept')?.path, kept.path)
  } finally {
    await db.close()
    await rm(dir, { recursive: true, force: true })
  }
})
