// Reads that stall (a source banned, no other peer yet) pile up on one NBD connection, each waiting on the
// connection's abort signal through the cache's raceAbort. Their number is bounded by the connection's
// in-flight limit, so Node's default of 10 listeners is not a leak signal here and must not warn.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { createNbdServer } from '../../src/blockstack/nbd/index.js'
import { silentLogger } from '../../src/blockstack/nbd/logger.js'
import { raceAbort } from '../../src/blockstack/cache.js'
import type { NbdExport } from '../../src/blockstack/types.js'
import { RawClient, withTempDir } from './nbd-helpers.js'
import { waitFor } from '../helpers/wait.js'

test('32 stalled reads on one connection raise no MaxListenersExceededWarning', { timeout: 30_000 }, async () => {
  await withTempDir(async dir => {
    const warnings: Error[] = []
    const onWarning = (w: Error): void => { warnings.push(w) }
    process.on('warning', onWarning)
    let started = 0
    let aborted = 0
    const stalled: NbdExport = {
      name: 'disk',
      sizeBytes: 1024 * 1024,
      read: async (_offset, _length, signal) => {
        started++
        try {
          return await raceAbort(new Promise<Buffer>(() => {}), signal as AbortSignal)
        } finally {
          aborted++
        }
      }
    }
    const server = createNbdServer({ provider: { list: () => ['disk'], get: () => stalled }, logger: silentLogger })
    const socket = join(dir, 'nbd.sock')
    await server.listenUnix(socket)
    const client = await RawClient.connect(socket)
    try {
      await client.open('disk')
      for (let i = 0; i < 32; i++) client.sendRequest(0, i, i * 4096, 4096)
      await waitFor('the reads to reach the export', () => started >= 16 ? true : undefined, { timeoutMs: 10_000 })
      // Warnings are emitted on the next tick: let them through before looking.
      await new Promise(resolve => setImmediate(resolve))
      assert.deepEqual(warnings.filter(w => w.name === 'MaxListenersExceededWarning').map(w => w.message), [])
    } finally {
      client.destroy()
      await server.close()
      process.off('warning', onWarning)
    }
    assert.equal(aborted, started, 'every stalled read was aborted when the connection went away')
  })
})
