// The RPC server over a real unix socket: a client that never reads its replies is stopped (reading pauses,
// unsent bytes stay bounded, nothing is lost once it reads), and silent connections cannot lock a local CLI out.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createConnection, type Socket } from 'node:net'
import { join } from 'node:path'
import { RpcServer } from '../../src/rpc/server.js'
import { callRpc } from '../../src/rpc/client.js'
import { makeTempDir, removeDir } from '../helpers/daemon.js'
import { waitFor, waitForEvent } from '../helpers/wait.js'

const REPLY_BYTES = 64 * 1024

async function connect (path: string): Promise<Socket> {
  const socket = createConnection(path)
  await waitForEvent('connect', socket, 'connect', () => true, { timeoutMs: 10_000 })
  return socket
}

test('a client that never reads its replies is paused with bounded unsent bytes, and loses nothing', { timeout: 60_000 }, async () => {
  const dir = await makeTempDir('rpcbp')
  let handled = 0
  const maxUnsentReplyBytes = 256 * 1024
  const maxInflight = 4
  const server = new RpcServer({
    methods: {
      big: async () => { handled++; return 'x'.repeat(REPLY_BYTES) },
      ping: async () => 'pong'
    },
    maxUnsentReplyBytes,
    maxInflightPerConnection: maxInflight
  })
  const path = join(dir, 'rpc.sock')
  await server.listen(path)
  try {
    const hog = await connect(path)
    hog.pause()
    const requests = 2000
    let payload = ''
    for (let i = 0; i < requests; i++) payload += JSON.stringify({ jsonrpc: '2.0', id: i, method: 'big' }) + '\n'
    hog.write(payload)
    const state = await waitFor('the hog connection to be paused', () => {
      const c = server.stats().connections[0]
      return c?.paused === true && c.unsentReplyBytes > maxUnsentReplyBytes ? c : undefined
    }, { timeoutMs: 30_000 })
    // In-flight requests may still add their replies after the pause: that is the bound.
    const bound = maxUnsentReplyBytes + maxInflight * (REPLY_BYTES + 64)
    assert.ok(state.unsentReplyBytes <= bound, `unsent ${state.unsentReplyBytes} > bound ${bound}`)
    assert.ok(handled < requests / 2, `the server went on reading: ${handled} of ${requests} handled`)
    // Another client is unaffected.
    assert.equal(await callRpc(path, 'ping', {}, { timeoutMs: 10_000 }), 'pong')
    // Once the hog reads, every request is answered, once.
    const ids = new Set<number>()
    let text = ''
    hog.setEncoding('utf8')
    hog.on('data', (chunk: string) => {
      text += chunk
      let nl = text.indexOf('\n')
      while (nl !== -1) {
        ids.add(JSON.parse(text.slice(0, nl)).id)
        text = text.slice(nl + 1)
        nl = text.indexOf('\n')
      }
    })
    hog.resume()
    await waitFor('every reply to arrive', () => ids.size === requests ? true : undefined, { timeoutMs: 30_000, wakeOn: [{ emitter: hog, event: 'data' }] })
    assert.equal(handled, requests)
    hog.destroy()
  } finally {
    await server.close()
    await removeDir(dir)
  }
})

test('64 silent connections do not lock out a client: the oldest idle one is evicted, silent ones time out', { timeout: 60_000 }, async () => {
  const dir = await makeTempDir('rpcidle')
  let release: () => void = () => {}
  const held = new Promise<void>(resolve => { release = resolve })
  const server = new RpcServer({
    methods: { ping: async () => 'pong', hold: async () => { await held; return 'held' } },
    maxConnections: 64,
    firstRequestTimeoutMs: 60_000
  })
  const path = join(dir, 'rpc.sock')
  await server.listen(path)
  const silent: Socket[] = []
  try {
    for (let i = 0; i < 64; i++) {
      const s = await connect(path)
      s.on('error', () => {})
      silent.push(s)
    }
        await waitFor('64 connections accepted', () => server.connectionCount() === 64 ? true : undefined, { timeoutMs: 10_000 })
        const firstClosed = waitForEvent('the oldest silent connection to close', silent[0], 'close', () => true, { timeoutMs: 10_000 })
    const firstText: string[] = []
    silent[0].on('data', (b: Buffer) => firstText.push(b.toString()))
    assert.equal(await callRpc(path, 'ping', {}, { timeoutMs: 10_000 }), 'pong')
        await firstClosed
    assert.match(firstText.join(''), /"code":1091/)
    assert.equal(server.stats().evictedConnections, 1)

    // When every slot is busy with a request in progress, a new client is refused with 1091, not queued forever.
        for (const s of silent) s.destroy()
    await waitFor('silent connections gone', () => server.connectionCount() === 0 ? true : undefined, { timeoutMs: 10_000 })
    const busy = await Promise.all(Array.from({ length: 64 }, async (_, i) => {
      const s = await connect(path)
      s.on('error', () => {})
      s.write(JSON.stringify({ jsonrpc: '2.0', id: i, method: 'hold' }) + '\n')
      return s
    }))
    await waitFor('64 requests in progress', () => server.stats().connections.filter(c => c.inflight === 1).length === 64 ? true : undefined, { timeoutMs: 10_000 })
    await assert.rejects(callRpc(path, 'ping', {}, { timeoutMs: 10_000 }), { code: 1091 })
    release()
    for (const s of busy) s.destroy()
  } finally {
    release()
        for (const s of silent) s.destroy()
    await server.close()
    await removeDir(dir)
  }
})

test('a connection that sends nothing is closed after the first-request timeout; one that sent a request is kept', { timeout: 30_000 }, async () => {
  const dir = await makeTempDir('rpcfirst')
  const server = new RpcServer({ methods: { ping: async () => 'pong' }, firstRequestTimeoutMs: 300, idleTimeoutMs: 60_000 })
  const path = join(dir, 'rpc.sock')
  await server.listen(path)
  try {
    const silent = await connect(path)
    const talker = await connect(path)
    talker.write(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }) + '\n')
    await waitForEvent('the reply', talker, 'data', () => true, { timeoutMs: 10_000 })
    await waitForEvent('the silent connection to be closed', silent, 'close', () => true, { timeoutMs: 10_000 })
    await waitFor('the server to drop the silent connection', () => server.connectionCount() === 1 ? true : undefined, { timeoutMs: 10_000 })
    assert.equal(talker.destroyed, false)
    assert.equal(server.stats().connections[0].sentRequest, true)
    talker.destroy()
  } finally {
    await server.close()
    await removeDir(dir)
  }
})
