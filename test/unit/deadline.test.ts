// deadline(): the hot path's replacement for AbortSignal.any([parent, AbortSignal.timeout(ms)]).

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { once } from 'node:events'
import { deadline, DeadlineError } from '../../src/blockstack/deadline.js'

test('deadline: aborts with the parent, with a TimeoutError when the time passes, and not at all once disposed', { timeout: 10_000 }, async () => {
  const parent = new AbortController()
  const a = deadline(parent.signal, 60_000)
  parent.abort(new Error('stopped'))
  assert.equal(a.signal.aborted, true)
  assert.equal((a.signal.reason as Error).message, 'stopped', "the parent's reason")

  const already = deadline(parent.signal, 60_000)
  assert.equal(already.signal.aborted, true, 'a parent aborted already: at once')

  // The deadline's timer is unref'd (it must not hold a daemon open): this one keeps the test's loop alive.
  const keepAlive = setTimeout(() => {}, 10_000)
  const quiet = new AbortController()
  const b = deadline(quiet.signal, 5, 'relay')
  await once(b.signal, 'abort')
  assert.ok(b.signal.reason instanceof DeadlineError)
  assert.equal((b.signal.reason as Error).name, 'TimeoutError')
  assert.match((b.signal.reason as Error).message, /relay timed out after 5 ms/)

  const c = deadline(quiet.signal, 5)
  c.dispose()
  c.dispose()
  // Disposed: neither the timer nor the parent reaches it. A later deadline on the same parent still fires.
  const d = deadline(quiet.signal, 20)
  await once(d.signal, 'abort')
  quiet.abort(new Error('late'))
  assert.equal(c.signal.aborted, false)
  clearTimeout(keepAlive)
})
