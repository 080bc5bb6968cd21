INSERT INTO users
SELECT u.m + i, 'user' || (u.m + i) || '@footdash.example',
       initcap(translate(substr(md5('un' || (u.m + i)), 1, 6), '0123456789', 'aeiouyrstn')),
       1 + fd_rand('ut' || (u.m + i)) % t.n,
       __TS__ + i * interval '1 minute', NULL,
       jsonb_build_object('lang', 'en', 'push', true, 'signup_day', __DAY__)
FROM (SELECT max(id) AS m, count(*) AS c FROM users) AS u, (SELECT count(*) AS n FROM teams) AS t,
     generate_series(1, greatest(1, u.c / 200)) AS i;

INSERT INTO matches
SELECT mx.m + i, h, 1 + (h + fd_rand('ma' || (mx.m + i)) % (t.n - 1)) % t.n,
       __TS__ + (i % 96) * interval '15 minutes', 'finished',
       fd_rand('mh' || (mx.m + i)) % 5, fd_rand('mw' || (mx.m + i)) % 4,
       'Stadium ' || upper(substr(md5('mv' || h), 1, 6)),
       __TS__ + (i % 96) * interval '15 minutes' + interval '2 hours'
FROM (SELECT max(id) AS m, count(*) AS c FROM matches) AS mx, (SELECT count(*)::int AS n FROM teams) AS t,
     generate_series(1, greatest(1, mx.c * 2 / 100)) AS i,
     LATERAL (SELECT 1 + fd_rand('mt' || (mx.m + i)) % t.n AS h) AS home;

INSERT INTO match_events
SELECT m.id * 32 + e, m.id,
       (CASE WHEN e % 2 = 0 THEN m.home_team_id ELSE m.away_team_id END - 1) * 25 + 1 + fd_rand('ep' || m.id || ':' || e) % 25,
       1 + fd_rand('em' || m.id || ':' || e) % 95,
       (ARRAY['goal','yellow_card','red_card','substitution','var_review','shot','corner','foul'])[1 + fd_rand('et' || m.id || ':' || e) % 8],
       'ref ' || substr(md5('ed' || m.id || ':' || e), 1, 20)
FROM matches AS m, generate_series(1, 3 + fd_rand('ec' || m.id) % 13) AS e
WHERE m.kickoff_at >= __TS__ AND m.kickoff_at < __TS__ + interval '1 day';

INSERT INTO notifications
SELECT nx.m + i, u.id, 1 + fd_rand('nn' || (nx.m + i)) % mx.m,
       'goal',
       jsonb_build_object(
           'title', 'Goal update',
           'body', 'Day ' || __DAY__ || ': ' || md5('nb' || (nx.m + i)),
           'deep_link', 'footdash://match/' || (1 + fd_rand('nn' || (nx.m + i)) % mx.m),
           'priority', fd_rand('np' || (nx.m + i)) % 3,
           'score', jsonb_build_array(fd_rand('nh' || (nx.m + i)) % 5, fd_rand('na' || (nx.m + i)) % 4)),
       __TS__ + (i % 1440) * interval '1 minute',
       NULL
FROM (SELECT max(id) AS m, count(*) AS c FROM notifications) AS nx,
     (SELECT max(id) AS m FROM matches) AS mx,
     (SELECT count(*) AS c FROM users) AS uc,
     generate_series(1, greatest(1, nx.c * 2 / 100)) AS i,
     (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM users) AS u
WHERE u.rn = 1 + fd_rand('nu' || __DAY__ || ':' || i) % uc.c;

UPDATE users SET last_seen_at = __TS__ + (id % 86400) * interval '1 second',
                 settings = settings || jsonb_build_object('last_active_day', __DAY__)
WHERE fd_rand('uu' || __DAY__ || ':' || id) % 100 = 0;

UPDATE notifications SET read_at = __TS__ + (id % 86400) * interval '1 second',
                         payload = payload || jsonb_build_object('opened', true)
WHERE fd_rand('nr' || __DAY__ || ':' || id) % 100 = 0;

UPDATE matches SET home_score = home_score + 1, updated_at = __TS__
WHERE fd_rand('mc' || __DAY__ || ':' || id) % 100 = 0;

DELETE FROM notifications WHERE fd_rand('nd' || __DAY__ || ':' || id) % 500 = 0;
DELETE FROM match_events WHERE fd_rand('ev' || __DAY__ || ':' || id) % 1000 = 0;
DELETE FROM users WHERE fd_rand('ux' || __DAY__ || ':' || id) % 1000 = 0;
