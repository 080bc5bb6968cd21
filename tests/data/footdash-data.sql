INSERT INTO teams
SELECT i,
       (ARRAY['Ashford','Brookvale','Carrow','Dunmore','Eastleigh','Fenwick','Glenholt','Harrowgate',
              'Ironbridge','Kingsmere','Lowther','Marston','Northcliffe','Oakham','Pennford','Redcastle'])[1 + (i - 1) % 16]
         || ' ' || (ARRAY['United','City','Rovers','Athletic','Wanderers','Albion','Town','Rangers'])[1 + fd_rand('tn' || i) % 8],
       upper(substr(md5('ts' || i), 1, 3)),
       (ARRAY['England','Spain','Germany','Italy','France','Netherlands','Portugal','Scotland'])[1 + fd_rand('tc' || i) % 8],
       1860 + fd_rand('tf' || i) % 150,
       timestamptz '2023-07-01 00:00:00+00' + i * interval '1 minute'
FROM generate_series(1, 16 * __SCALE__) AS i;

INSERT INTO players
SELECT i,
       (i - 1) / 25 + 1,
       (ARRAY['James','Luca','Mateo','Noah','Oliver','Hugo','Leon','Tomas','Kai','Rafael','Jonas','Emil'])[1 + fd_rand('pf' || i) % 12]
         || ' ' || initcap(translate(substr(md5('pl' || i), 1, 7), '0123456789', 'aeiouyrstn')),
       CASE WHEN (i - 1) % 25 < 3 THEN 'GK' WHEN (i - 1) % 25 < 11 THEN 'DF'
            WHEN (i - 1) % 25 < 19 THEN 'MF' ELSE 'FW' END,
       (i - 1) % 25 + 1,
       date '1988-01-01' + fd_rand('pb' || i) % 6000
FROM generate_series(1, 400 * __SCALE__) AS i;

INSERT INTO users
SELECT i,
       'user' || i || '@footdash.example',
       initcap(translate(substr(md5('un' || i), 1, 6), '0123456789', 'aeiouyrstn')) || (fd_rand('ud' || i) % 100),
       CASE WHEN fd_rand('uf' || i) % 5 = 0 THEN NULL ELSE 1 + fd_rand('ut' || i) % (16 * __SCALE__) END,
       timestamptz '2023-07-01 00:00:00+00' + (fd_rand('uc' || i) % 31536000) * interval '1 second',
       CASE WHEN fd_rand('ul' || i) % 10 = 0 THEN NULL
            ELSE timestamptz '2024-07-01 00:00:00+00' - (fd_rand('us' || i) % 2592000) * interval '1 second' END,
       jsonb_build_object(
           'lang', (ARRAY['en','es','de','fr','it','pt'])[1 + fd_rand('ug' || i) % 6],
           'push', fd_rand('up' || i) % 3 <> 0,
           'digest', (ARRAY['none','daily','weekly'])[1 + fd_rand('ui' || i) % 3],
           'theme', (ARRAY['light','dark'])[1 + fd_rand('uh' || i) % 2])
FROM generate_series(1, 2000 * __SCALE__) AS i;

INSERT INTO matches
SELECT i, h, 1 + (h + fd_rand('ma' || i) % (16 * __SCALE__ - 1)) % (16 * __SCALE__),
       kickoff, 'finished', fd_rand('mh' || i) % 5, fd_rand('mw' || i) % 4,
       'Stadium ' || upper(substr(md5('mv' || h), 1, 6)),
       kickoff + interval '2 hours'
FROM (SELECT i, 1 + fd_rand('mt' || i) % (16 * __SCALE__) AS h,
             timestamptz '2023-07-01 00:00:00+00' + (i::bigint * 31536000 / (300 * __SCALE__)) * interval '1 second' AS kickoff
      FROM generate_series(1, 300 * __SCALE__) AS i) AS m;

INSERT INTO match_events
SELECT m.id * 32 + e, m.id,
       CASE WHEN fd_rand('ek' || m.id || ':' || e) % 10 = 0 THEN NULL
            ELSE (CASE WHEN fd_rand('es' || m.id || ':' || e) % 2 = 0 THEN m.home_team_id ELSE m.away_team_id END - 1) * 25
                 + 1 + fd_rand('ep' || m.id || ':' || e) % 25 END,
       1 + fd_rand('em' || m.id || ':' || e) % 95,
       (ARRAY['goal','yellow_card','red_card','substitution','var_review','shot','corner','foul'])[1 + fd_rand('et' || m.id || ':' || e) % 8],
       'ref ' || substr(md5('ed' || m.id || ':' || e), 1, 20)
FROM matches AS m, generate_series(1, 3 + fd_rand('ec' || m.id) % 13) AS e;

INSERT INTO notifications
SELECT i, 1 + fd_rand('nu' || i) % (2000 * __SCALE__), mid,
       kind,
       jsonb_build_object(
           'title', initcap(replace(kind, '_', ' ')) || ' update',
           'body', 'Match ' || coalesce(mid::text, 'news') || ': ' || md5('nb' || i),
           'deep_link', 'footdash://match/' || coalesce(mid::text, '0'),
           'priority', fd_rand('np' || i) % 3,
           'score', jsonb_build_array(fd_rand('nh' || i) % 5, fd_rand('na' || i) % 4)),
       created,
       CASE WHEN fd_rand('nr' || i) % 5 < 3 THEN created + (fd_rand('nt' || i) % 86400) * interval '1 second' END
FROM (SELECT i,
             CASE WHEN fd_rand('nm' || i) % 10 = 0 THEN NULL ELSE 1 + fd_rand('nn' || i) % (300 * __SCALE__) END AS mid,
             (ARRAY['goal','kickoff','final_score','lineup','news','red_card'])[1 + fd_rand('nk' || i) % 6] AS kind,
             timestamptz '2023-07-01 00:00:00+00' + (fd_rand('nc' || i) % 31536000) * interval '1 second' AS created
      FROM generate_series(1, 4500 * __SCALE__) AS i) AS n;
