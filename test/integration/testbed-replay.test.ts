// The benchmark's trace replay client (scripts/lib/nbd-replay.ts) against a real nbdkit server: it reads
// exactly the bytes a local pread replay reads, and reports NBD errors clearly.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { tmpdir } from 'node:os'
import { createServer, connect, type Server, type Socket } from 'node:net'
import { join } from 'node:path'
import { loadTrace, distinctBytes, nbdConnect, replayNbd, replayNbdResumable, replayFile, parseTrace, type TraceRead, type NbdConnection } from '../../scripts/lib/nbd-replay.js'
import { startNbdkitFile, type NbdkitServer } from '../helpers/vm.js'

const TRACE = new URL('../fixtures/debian12-boot.reads.csv', import.meta.url).pathname
let dir: string
let image: string
let server: NbdkitServer
let reads: TraceRead[]

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmt-replay-'))
  image = join(dir, 'image.raw')
  reads = await loadTrace(TRACE)
  // A sparse 1 GiB image with random bytes in the first reads' ranges, so the digests compare real data.
  await writeFile(image, Buffer.alloc(0))
  const { open } = await import('node:fs/promises')
  const fh = await open(image, 'r+')
  await fh.truncate(1024 ** 3)
  for (const r of reads.slice(0, 200)) await fh.write(randomBytes(r.length), 0, r.length, r.offset)
  await fh.close()
  server = await startNbdkitFile({ file: image, socket: join(dir, 'nbd.sock') })
}, { timeout: 60_000 })

after(async () => {
  await server?.stop()
  if (dir !== undefined) await rm(dir, { recursive: true, force: true })
})

test('the boot trace parses: 1,006 reads, about 40.7 MiB distinct', { timeout: 10_000 }, () => {
  assert.equal(reads.length, 1006)
  assert.ok(Math.abs(distinctBytes(reads) / 2 ** 20 - 40.7) < 0.1, `${distinctBytes(reads) / 2 ** 20} MiB`)
  assert.equal(distinctBytes([{ timeMs: 0, offset: 0, length: 10 }, { timeMs: 0, offset: 5, length: 10 }, { timeMs: 0, offset: 100, length: 1 }]), 16)
  assert.throws(() => parseTrace('0,1,x\n'), { name: 'TraceFormatError' })
})

test('an NBD replay reads the same bytes as a local replay', { timeout: 60_000 }, async () => {
  const conn = await nbdConnect({ socketPath: server.socket, exportName: 'guest' })
  assert.equal(conn.sizeBytes, 1024 ** 3)
  const viaNbd = await replayNbd(reads, conn)
  await conn.close()
  const local = await replayFile(reads, image)
  assert.equal(viaNbd.reads, 1006)
  assert.equal(viaNbd.bytes, reads.reduce((s, r) => s + r.length, 0))
  assert.equal(viaNbd.digest, local.digest)
})

test('a read past the end of the export is refused with NbdClientError', { timeout: 30_000 }, async () => {
  const conn = await nbdConnect({ socketPath: server.socket })
  await assert.rejects(conn.read(1024 ** 3 - 10, 4096), { name: 'NbdClientError' })
  await conn.close()
})

test('a resumable replay survives its server dying mid-trace: it waits, reconnects, retries the read, same digest', { timeout: 90_000 }, async () => {
  // The failure run of the testbed benchmark kills a host's agent; its driver must resume on the same export.
  // The dying server is a unix-socket front for nbdkit that we can kill (every connection cut, socket gone)
  // and start again on the same path, as a restarted agent would.
  const socket = join(dir, 'front.sock')
  const front = new Set<Socket>()
  const listen = async (): Promise<Server> => await new Promise((resolve, reject) => {
    const srv = createServer((c) => {
      const up = connect({ path: server.socket })
      front.add(c).add(up)
      c.pipe(up).pipe(c)
      const drop = (): void => { c.destroy(); up.destroy(); front.delete(c); front.delete(up) }
      c.on('error', drop).on('close', drop)
      up.on('error', drop).on('close', drop)
    })
    srv.once('error', reject)
    srv.listen(socket, () => { resolve(srv) })
  })
  const kill = async (srv: Server): Promise<void> => {
    const closed = new Promise<void>((resolve) => { srv.close(() => { resolve() }) })
    for (const c of front) c.destroy()
    await closed
  }
  let live = await listen()
  let readsDone = 0
  const lostErrors: string[] = []
  try {
    const result = await replayNbdResumable(reads, {
      connect: async (): Promise<NbdConnection> => {
        const conn = await nbdConnect({ socketPath: socket, exportName: 'guest' })
        return {
          ...conn,
          read: async (offset, length) => {
            // Read 300 goes to a server that has just died: the connection is gone under it.
            if (++readsDone === 300) await kill(live)
            return await conn.read(offset, length)
          }
        }
      },
      onLost: async (err) => {
        lostErrors.push(err.name)
        live = await listen()
      }
    })
    assert.ok(readsDone > 300)
    assert.deepEqual(lostErrors, ['NbdClientError'])
    assert.equal(result.reconnects, 1)
    assert.equal(result.reads, reads.length)
    assert.equal(result.digest, (await replayFile(reads, image)).digest)
  } finally {
    await kill(live)
  }
})

test('a resumable replay does not retry a refused read, and gives up after maxReconnects losses', { timeout: 60_000 }, async () => {
  const past: TraceRead[] = [{ timeMs: 0, offset: 1024 ** 3 - 10, length: 4096 }]
  let lost = 0
  await assert.rejects(replayNbdResumable(past, {
    connect: async () => await nbdConnect({ socketPath: server.socket, exportName: 'guest' }),
    onLost: async () => { lost++ }
  }), { name: 'NbdClientError' })
  assert.equal(lost, 0)
  // A server that is never back: every connection breaks at once; the replay stops after 2 reconnects.
  let connects = 0
  await assert.rejects(replayNbdResumable(reads, {
    connect: async (): Promise<NbdConnection> => {
      connects++
      const conn = await nbdConnect({ socketPath: server.socket, exportName: 'guest' })
      return { ...conn, read: async () => { await conn.close(); return await conn.read(0, 512) } }
    },
    onLost: async () => {},
    maxReconnects: 2
  }), { name: 'NbdClientError' })
  assert.equal(connects, 3)
})
