package redisservice

import (
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A session the original service wrote is usable through the manager
// when the cookie carries its id, and one the manager wrote is usable by
// the original service.
func TestSessionManagerInterop(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		a := newSessionApp(t, b, Options{}, SessionConfig{CookieName: "connect.sid", InsecureCookie: true})
		ctx := ctxT(t)
		now := a.clock.now().UTC().Format(isoMillis)

		// The original service's session: JSON.stringify, TTL in seconds.
		ts := `{"userId":"u9","email":"ts@example.com","role":"admin","createdAt":"` + now + `","lastActivity":"` + now +
			`","ip":"198.51.100.7","userAgent":"node","permissions":[],"lastOrderId":1234567890123456,"note":"caf\u00e9"}`
		require.NoError(t, b.client.Set(ctx, b.raw("session:ts-session-1"), ts, time.Hour).Err())
		me, ok := a.me("ts-session-1")
		require.True(t, ok)
		assert.Equal(t, "u9", me.UserID)
		assert.Equal(t, "198.51.100.7", me.IP)
		assert.Equal(t, map[string]json.RawMessage{"permissions": json.RawMessage(`[]`), "lastOrderId": json.RawMessage(`1234567890123456`),
			"note": json.RawMessage(`"caf\u00e9"`)}, me.Values, "its own fields, byte for byte")
		a.put("ts-session-1", "cart", `["A-1"]`)
		raw := b.client.Get(ctx, b.raw("session:ts-session-1")).Val()
		assert.Equal(t, strings.TrimSuffix(ts, "}")+`,"cart":["A-1"]}`, raw, "a Put adds its member and keeps every byte")
		var parsed map[string]any // what JSON.parse sees
		require.NoError(t, json.Unmarshal([]byte(raw), &parsed))
		assert.Equal(t, []any{"A-1"}, parsed["cart"])
		d := b.client.PTTL(ctx, b.raw("session:ts-session-1")).Val()
		assert.True(t, d > 59*time.Minute, "PTTL = %v; its TTL is kept", d)
		assert.Contains(t, b.client.ZRange(ctx, b.raw("user-sessions:u9"), 0, -1).Val(), "ts-session-1", "it joins its user's index")

		// The manager's session, as the original service reads it.
		id := a.login("u10", "")
		a.put(id, "cart", `{"items":["B-2"]}`)
		raw = b.client.Get(ctx, b.raw("session:"+id)).Val()
		var fields map[string]json.RawMessage
		require.NoError(t, json.Unmarshal([]byte(raw), &fields))
		assert.Equal(t, `"u10"`, string(fields["userId"]))
		iso := regexp.MustCompile(`^"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"$`)
		assert.Regexp(t, iso, string(fields["createdAt"]), "toISOString")
		assert.Regexp(t, iso, string(fields["lastActivity"]), "toISOString")
		assert.JSONEq(t, `{"items":["B-2"]}`, string(fields["cart"]), "values at the top level")
		assert.True(t, strings.HasPrefix(raw, `{"userId":"u10","email":"","role":"cashier","createdAt":`), "JSON.stringify's order: %s", raw)

		// The original service rewrites it (JSON.parse, change, JSON.stringify).
		fields["role"] = json.RawMessage(`"manager"`)
		fields["fromTS"] = json.RawMessage(`true`)
		b2, err := json.Marshal(fields)
		require.NoError(t, err)
		require.NoError(t, b.client.Set(ctx, b.raw("session:"+id), b2, time.Hour).Err())
		resp, body := a.do("GET", "/me", "connect.sid="+id, "")
		require.Equal(t, http.StatusOK, resp.StatusCode, body)
		require.NoError(t, json.Unmarshal([]byte(body), &me))
		assert.Equal(t, "true", string(me.Values["fromTS"]))
		assert.JSONEq(t, `{"items":["B-2"]}`, string(me.Values["cart"]))
		data, found, err := a.s.GetSession(ctx, id)
		require.NoError(t, err)
		require.True(t, found)
		assert.Equal(t, "manager", data.Role)
	})
}
